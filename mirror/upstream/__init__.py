"""The upstream registries: one httpx client each, with auth, egress proxy, trust and retries."""

from __future__ import annotations

from mirror.upstream.client import BlobBody, FetchedManifest, Health, ManifestHead, Upstream, anonymous_quota_warning

__all__ = ["BlobBody", "FetchedManifest", "Health", "ManifestHead", "Upstream", "anonymous_quota_warning"]
