"""Signature policy: containers-policy.json read as podman and skopeo read it (verification to come: issue 25)."""
