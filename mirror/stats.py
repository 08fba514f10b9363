"""Cache statistics: in-process counters, a JSON snapshot and Prometheus text."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields


@dataclass
class Stats:
    requests: int = 0
    manifest_hits: int = 0
    protocol_answers: int = 0
    manifest_misses: int = 0
    manifest_stale: int = 0
    blob_hits: int = 0
    blob_misses: int = 0
    coalesced: int = 0
    bytes_served_from_cache: int = 0
    bytes_fetched_from_upstream: int = 0
    upstream_requests: int = 0
    upstream_errors: int = 0
    upstream_retries: int = 0
    digest_mismatches: int = 0
    evictions: int = 0
    evicted_bytes: int = 0
    uncached_downloads: int = 0
    disk_full: int = 0
    started_at: float = field(default_factory=time.time)

    def counters(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "started_at"}

    def snapshot(
        self, *, inflight: int, cached_blobs: int, cached_bytes: int, max_size: int | None
    ) -> dict[str, object]:
        return {
            **self.counters(),
            "inflight_downloads": inflight,
            "cached_blobs": cached_blobs,
            "cached_bytes": cached_bytes,
            "max_size_bytes": max_size or 0,
            "uptime_seconds": round(time.time() - self.started_at, 3),
        }


_HELP = {
    "requests": "Registry API requests received.",
    "manifest_hits": "Manifest requests answered from the cache.",
    "protocol_answers": "Manifest hits answered from memory by the HTTP layer, without the web framework.",
    "manifest_misses": "Manifest requests that needed the upstream.",
    "manifest_stale": "Manifest requests answered from the cache because the upstream failed.",
    "blob_hits": "Blob requests answered from the cache.",
    "blob_misses": "Blob requests that started an upstream download.",
    "coalesced": "Blob requests that joined a download already in flight.",
    "bytes_served_from_cache": "Bytes of blobs and manifests sent to clients from the cache.",
    "bytes_fetched_from_upstream": "Bytes downloaded from upstream registries.",
    "upstream_requests": "HTTP requests sent to upstream registries.",
    "upstream_errors": "Upstream requests that failed or returned a server error.",
    "upstream_retries": "Upstream requests sent again after a transient failure.",
    "digest_mismatches": "Upstream downloads discarded because their digest did not match.",
    "evictions": "Blobs and manifests removed to keep the cache within max_size or max_age.",
    "evicted_bytes": "Bytes removed from the cache by eviction.",
    "uncached_downloads": "Downloads streamed to clients without being cached (too large, or no space).",
    "disk_full": "Times the cache's disk had no room for a download, even after eviction.",
}


def prometheus(snapshot: dict[str, object]) -> str:
    """Render a snapshot in the Prometheus text exposition format."""
    lines: list[str] = []
    for name, value in snapshot.items():
        metric = f"mirror_{name}"
        if name in _HELP:
            metric += "_total"
            lines += [f"# HELP {metric} {_HELP[name]}", f"# TYPE {metric} counter"]
        else:
            lines.append(f"# TYPE {metric} gauge")
        lines.append(f"{metric} {value}")
    return "\n".join(lines) + "\n"
