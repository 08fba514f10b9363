"""The upstream registries: one httpx client each, with auth, egress proxy, trust and retries."""

from __future__ import annotations

from mirror.upstream.body import UpstreamBody
from mirror.upstream.client import (
    FetchedManifest,
    ManifestHead,
    Upstream,
    anonymous_quota_warning,
)
from mirror.upstream.health import Health

__all__ = ["FetchedManifest", "Health", "ManifestHead", "Upstream", "UpstreamBody", "anonymous_quota_warning"]
