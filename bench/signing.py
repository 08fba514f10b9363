"""Scenario 4's signed image: the benchmark image signed in cosign's format, and a
containers-policy.json(5) that requires that signature for the image's repository.

No cosign here (Debian's sigstore tooling is built without it), so this writes what
`cosign sign --key` writes: an ECDSA P-256 key (`cosign.pub`, a PEM public key), the
simple-signing payload as a blob, a config blob, and an OCI manifest under the tag
`sha256-<hex>.sig` in the same repository whose one layer is the payload, with the base64
DER signature of the payload's bytes in the `dev.cosignproject.cosign/signature` annotation.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bench.seed import Image, Pusher

# Scenario 4's variant: its key in results.json, and its name in RESULTS.md.
TARGET = "mirror_signed"
LABEL = "mirror (signature policy)"

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
REGISTRY = "docker.io"  # the upstream's name in the mirror: the policy names images under it


@dataclass(frozen=True)
class SignedImage:
    """Where the signature and the policy that asks for it are."""

    identity: str  # the signed repository, as the policy and the payload name it
    policy: Path
    public_key: Path
    signature_tag: str
    payloads: tuple[str, ...]  # digests of the signature's payload blobs (one per signature)

    def accepted_line(self, digest: str) -> str:
        """What the mirror logs when its policy accepts the image `digest`."""
        return f"signature policy accepted {self.identity}@{digest}"


def signature_tag(digest: str) -> str:
    """cosign's tag for the signatures of a manifest digest."""
    algorithm, hex_digest = digest.split(":", 1)
    return f"{algorithm}-{hex_digest}.sig"


def simple_signing_payload(identity: str, digest: str) -> bytes:
    """cosign's payload, byte for byte as it marshals it: what the signature covers."""
    payload = {
        "critical": {
            "identity": {"docker-reference": identity},
            "image": {"docker-manifest-digest": digest},
            "type": "cosign container image signature",
        },
        "optional": None,
    }
    return json.dumps(payload, separators=(",", ":")).encode()


def policy_requiring(identity: str, public_key: Path) -> dict[str, object]:
    """Anything is accepted, except the `identity` repository: signed with this key, for this repository."""
    requirement = {"type": "sigstoreSigned", "keyPath": str(public_key), "signedIdentity": {"type": "matchRepository"}}
    return {"default": [{"type": "insecureAcceptAnything"}], "transports": {"docker": {identity: [requirement]}}}


def sign_image(pusher: Pusher, work: Path, image: Image) -> SignedImage:
    """Sign `image` with a new key, push the signature next to it, and write the key and policy under `work`."""
    work.mkdir(parents=True, exist_ok=True)
    identity = f"{REGISTRY}/{image.repository}"
    key = ec.generate_private_key(ec.SECP256R1())
    public_key = work / "cosign.pub"
    public_key.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    payload = simple_signing_payload(identity, image.digest)
    signature = key.sign(payload, ec.ECDSA(hashes.SHA256()))
    payload_digest = pusher.push_bytes(image.repository, payload)
    config = _signature_config(payload_digest)
    config_digest = pusher.push_bytes(image.repository, config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "size": len(config), "digest": config_digest},
        "layers": [
            {
                "mediaType": SIMPLE_SIGNING,
                "size": len(payload),
                "digest": payload_digest,
                "annotations": {SIGNATURE_ANNOTATION: base64.b64encode(signature).decode()},
            }
        ],
    }
    tag = signature_tag(image.digest)
    pusher.manifest(image.repository, tag, json.dumps(manifest).encode(), media_type=OCI_MANIFEST)
    policy = work / "policy.json"
    policy.write_text(json.dumps(policy_requiring(identity, public_key), indent=2) + "\n")
    return SignedImage(identity, policy, public_key, tag, (payload_digest,))


def _signature_config(payload_digest: str) -> bytes:
    """The config cosign gives a signature image: empty, its one diff_id the payload's."""
    config = {
        "architecture": "",
        "created": "0001-01-01T00:00:00Z",
        "history": [{"created": "0001-01-01T00:00:00Z"}],
        "os": "",
        "rootfs": {"type": "layers", "diff_ids": [payload_digest]},
        "config": {},
    }
    return json.dumps(config, separators=(",", ":")).encode()
