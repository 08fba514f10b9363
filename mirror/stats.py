"""Cache statistics: in-process counters, a JSON snapshot and Prometheus text."""

from __future__ import annotations

import bisect
import re
import time
from dataclasses import dataclass, field, fields

# Counters kept per upstream; /stats also shows their sums under these names.
UPSTREAM_TOTALS = {
    "upstream_requests": "requests",
    "upstream_errors": "errors",
    "upstream_retries": "retries",
    "bytes_fetched_from_upstream": "bytes_fetched",
}


_DIGITS = re.compile(r"[0-9]{1,18}")


@dataclass
class UpstreamStats:
    """What one upstream cost, and the pull quota it last announced (Docker Hub's `ratelimit-*`)."""

    requests: int = 0
    errors: int = 0
    retries: int = 0
    bytes_fetched: int = 0
    manifest_gets: int = 0  # what Docker Hub counts as pulls
    tag_moves: int = 0  # a tag seen pointing to another digest than the last time (the tag journal)
    # The signature policy's verdicts on its manifests: accepted, refused (enforce mode), audited
    # (refused, and served anyway in audit mode).
    signature_verdicts: dict[str, int] = field(default_factory=dict)
    ratelimit_limit: int | None = None
    ratelimit_remaining: int | None = None
    ratelimit_window_seconds: int | None = None
    ratelimit_source: str | None = None
    ratelimit_seen_at: float | None = None
    offline: bool = False  # the mirror does not dial it (`offline = true` or `mirror serve --offline`)

    def saw_ratelimit(self, limit: str | None, remaining: str | None, source: str | None) -> None:
        """Keep the headers of an answer that carried them: `100;w=21600`, `76;w=21600`."""
        if limit is None and remaining is None:
            return
        self.ratelimit_limit, window = _quota(limit)
        self.ratelimit_remaining, window_remaining = _quota(remaining)
        self.ratelimit_window_seconds = window or window_remaining
        self.ratelimit_source = source[:100] if source else None
        self.ratelimit_seen_at = time.time()

    def verdict(self, result: str) -> None:
        self.signature_verdicts[result] = self.signature_verdicts.get(result, 0) + 1

    def snapshot(self) -> dict[str, object]:
        found = {f.name: getattr(self, f.name) for f in fields(self)}
        found["signature_verdicts"] = dict(self.signature_verdicts)
        return found


def _quota(value: str | None) -> tuple[int | None, int | None]:
    if value is None:
        return None, None
    amount, _, params = value.partition(";")
    window = next((p.strip()[2:] for p in params.split(";") if p.strip().startswith("w=")), "")
    return _count(amount.strip()), _count(window)


def _count(text: str) -> int | None:
    """A header's non-negative integer; None for anything else (`isdigit` would take "²")."""
    return int(text) if _DIGITS.fullmatch(text) else None


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
    digest_mismatches: int = 0
    download_resumes: int = 0
    parallel_downloads: int = 0
    cold_range_reads: int = 0
    negative_hits: int = 0
    evictions: int = 0
    evicted_bytes: int = 0
    uncached_downloads: int = 0
    disk_full: int = 0
    blobs_fetched_ahead: int = 0
    started_at: float = field(default_factory=time.time)
    upstreams: dict[str, UpstreamStats] = field(default_factory=dict)
    latencies: Latencies = field(default_factory=lambda: Latencies())  # /metrics only

    def upstream(self, name: str) -> UpstreamStats:
        return self.upstreams.setdefault(name, UpstreamStats())

    def total(self, name: str) -> int:
        """The sum over upstreams of one of UPSTREAM_TOTALS."""
        counter = UPSTREAM_TOTALS[name]
        return sum(getattr(upstream, counter) for upstream in self.upstreams.values())

    @property
    def bytes_fetched_from_upstream(self) -> int:
        return self.total("bytes_fetched_from_upstream")

    def counters(self) -> dict[str, int]:
        counters = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in ("started_at", "upstreams", "latencies")
        }
        return counters | {name: self.total(name) for name in UPSTREAM_TOTALS}

    def snapshot(
        self, *, inflight: int, cached_blobs: int, cached_bytes: int, max_size: int | None, index_ready: bool = True
    ) -> dict[str, object]:
        return {
            **self.counters(),
            "inflight_downloads": inflight,
            "blob_index_ready": int(index_ready),  # 0 while the start-up scan runs: counts below are partial
            "cached_blobs": cached_blobs,
            "cached_bytes": cached_bytes,
            "max_size_bytes": max_size or 0,
            "uptime_seconds": round(time.time() - self.started_at, 3),
            "upstreams": {name: upstream.snapshot() for name, upstream in self.upstreams.items()},
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
    "digest_mismatches": "Upstream downloads discarded because their digest did not match.",
    "download_resumes": "Upstream downloads cut mid-stream and resumed from the bytes already received.",
    "parallel_downloads": "Upstream downloads of large blobs fetched as several ranges at once.",
    "negative_hits": "Manifest requests for a tag answered 404 from memory: the upstream said so within negative_ttl.",
    "cold_range_reads": "Ranged blob requests beyond a download's progress, answered by a ranged upstream request.",
    "evictions": "Blobs and manifests removed to keep the cache within max_size or max_age.",
    "evicted_bytes": "Bytes removed from the cache by eviction.",
    "uncached_downloads": "Downloads streamed to clients without being cached (too large, or no space).",
    "blobs_fetched_ahead": "Blobs fetched ahead: started when a client began on their image (fetch_ahead).",
    "disk_full": "Times the cache's disk had no room for a download, even after eviction.",
}


_UPSTREAM_HELP = {
    "offline": ("mirror_upstream_offline", "gauge", "1 when the mirror does not dial the upstream (offline mode)."),
    "requests": (
        "mirror_upstream_requests_total",
        "counter",
        "HTTP requests sent to the upstream (tokens, redirects and retries included).",
    ),
    "errors": ("mirror_upstream_errors_total", "counter", "Upstream requests that failed or returned a server error."),
    "retries": ("mirror_upstream_retries_total", "counter", "Upstream requests sent again after a transient failure."),
    "bytes_fetched": ("mirror_bytes_fetched_from_upstream_total", "counter", "Bytes downloaded from the upstream."),
    "manifest_gets": (
        "mirror_upstream_manifest_gets_total",
        "counter",
        "Manifest GETs sent to the upstream: what Docker Hub counts as pulls.",
    ),
    "tag_moves": (
        "mirror_upstream_tag_moves_total",
        "counter",
        "Tags the upstream moved: seen pointing to another digest than the mirror last saw.",
    ),
    "ratelimit_limit": (
        "mirror_upstream_ratelimit_limit",
        "gauge",
        "Pulls the upstream allows per window (its ratelimit-limit header).",
    ),
    "ratelimit_remaining": (
        "mirror_upstream_ratelimit_remaining",
        "gauge",
        "Pulls left in the window (its ratelimit-remaining header).",
    ),
    "ratelimit_window_seconds": (
        "mirror_upstream_ratelimit_window_seconds",
        "gauge",
        "The quota's window (w= in its ratelimit headers).",
    ),
}


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def prometheus(snapshot: dict[str, object]) -> str:
    """Render a snapshot in the Prometheus text exposition format."""
    lines: list[str] = []
    for name, value in snapshot.items():
        if name in UPSTREAM_TOTALS or name == "upstreams":
            continue  # rendered per upstream below
        if name == "fleet" and isinstance(value, dict):
            lines += ["# TYPE mirror_fleet_redis_up gauge", f"mirror_fleet_redis_up {int(value.get('redis') == 'up')}"]
            lines += [
                "# HELP mirror_fleet_redis_failures_total Redis calls that failed; each was answered without Redis.",
                "# TYPE mirror_fleet_redis_failures_total counter",
                f"mirror_fleet_redis_failures_total {value.get('redis_failures', 0)}",
            ]
            continue
        metric = f"mirror_{name}"
        if name in _HELP:
            metric += "_total"
            lines += [f"# HELP {metric} {_HELP[name]}", f"# TYPE {metric} counter"]
        else:
            lines.append(f"# TYPE {metric} gauge")
        lines.append(f"{metric} {value}")
    upstreams = snapshot.get("upstreams")
    assert isinstance(upstreams, dict)
    for key, (metric, kind, text) in _UPSTREAM_HELP.items():
        lines += [f"# HELP {metric} {text}", f"# TYPE {metric} {kind}"]
        for upstream, values in upstreams.items():
            if values[key] is not None:
                value = int(values[key]) if isinstance(values[key], bool) else values[key]
                lines.append(f'{metric}{{upstream="{_label(upstream)}"}} {value}')
    lines += [
        "# HELP mirror_upstream_signature_verdicts_total The signature policy's verdicts on manifests, by result"
        " (accepted; refused; audited: refused and served in audit mode).",
        "# TYPE mirror_upstream_signature_verdicts_total counter",
    ]
    for upstream, values in upstreams.items():
        for result, count in sorted(values["signature_verdicts"].items()):
            labels = f'upstream="{_label(upstream)}",result="{_label(result)}"'
            lines.append(f"mirror_upstream_signature_verdicts_total{{{labels}}} {count}")
    lines += [
        "# HELP mirror_upstream_ratelimit_source_info The address the upstream counts pulls against"
        " (its docker-ratelimit-source header).",
        "# TYPE mirror_upstream_ratelimit_source_info gauge",
    ]
    for upstream, values in upstreams.items():
        if values["ratelimit_source"]:
            labels = f'upstream="{_label(upstream)}",source="{_label(values["ratelimit_source"])}"'
            lines.append(f"mirror_upstream_ratelimit_source_info{{{labels}}} 1")
    return "\n".join(lines) + "\n"


# Latency buckets, in seconds: from a warm tag in memory to a large blob over a slow link.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)


class Histogram:
    """Cumulative-bucket counts, a sum and a count: Prometheus's histogram."""

    __slots__ = ("count", "counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * len(LATENCY_BUCKETS)
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        index = bisect.bisect_left(LATENCY_BUCKETS, seconds)  # the first bucket whose bound holds it
        if index < len(LATENCY_BUCKETS):
            self.counts[index] += 1  # beyond the last bound: only in +Inf, which is the count
        self.sum += seconds
        self.count += 1


class Latencies:
    """Time to first byte and total time of requests, by route and cache status."""

    def __init__(self) -> None:
        self.first_byte: dict[tuple[str, str], Histogram] = {}
        self.total: dict[tuple[str, str], Histogram] = {}

    def observe(self, route: str, cache: str, first_byte: float, total: float) -> None:
        key = (route, cache)
        for table, seconds in ((self.first_byte, first_byte), (self.total, total)):
            histogram = table.get(key)
            if histogram is None:
                histogram = table[key] = Histogram()
            histogram.observe(seconds)

    def prometheus(self) -> str:
        lines: list[str] = []
        for name, table, text in (
            ("mirror_request_first_byte_seconds", self.first_byte, "Time from a request to its first byte sent."),
            ("mirror_request_duration_seconds", self.total, "Time from a request to its last byte sent."),
        ):
            lines += [f"# HELP {name} {text}", f"# TYPE {name} histogram"]
            for (route, cache), histogram in sorted(table.items()):
                labels = f'route="{_label(route)}",cache="{_label(cache)}"'
                cumulative = 0
                for bound, count in zip(LATENCY_BUCKETS, histogram.counts, strict=True):
                    cumulative += count
                    lines.append(f'{name}_bucket{{{labels},le="{bound}"}} {cumulative}')
                lines.append(f'{name}_bucket{{{labels},le="+Inf"}} {histogram.count}')
                lines.append(f"{name}_sum{{{labels}}} {histogram.sum:.6f}")
                lines.append(f"{name}_count{{{labels}}} {histogram.count}")
        return "\n".join(lines) + "\n"
