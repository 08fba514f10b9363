"""The dashboard: a page at `/`, its static files, and the JSON it polls at `/api/dashboard`.

The page (mirror/http/static/) is plain HTML, CSS and JS served by the mirror itself: it needs
no network beyond the mirror. Counters are sampled every few seconds into an in-memory
ring buffer (the last hour), so the charts need no external metrics store.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from mirror.registry.errors import NotFound
from mirror.stats import Stats
from mirror.upstream import Upstream, anonymous_quota_warning

if TYPE_CHECKING:
    from mirror.http.app import Mirror

STATIC_DIR = Path(__file__).parent / "static"
SAMPLE_INTERVAL = 5.0
SAMPLES = 720  # one hour at SAMPLE_INTERVAL
TOP_REPOSITORIES = 10
MAX_REPOSITORIES = 1000  # distinct repositories counted; the least requested are dropped beyond

# Scripts only from the mirror, no inline code, no framing: names shown on the page come from clients.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
_STATIC_FILES = {
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}


def hits_and_misses(stats: Stats) -> tuple[int, int]:
    """Requests answered without an upstream fetch of their own, and those that needed one."""
    hits = stats.manifest_hits + stats.manifest_stale + stats.blob_hits + stats.coalesced
    return hits, stats.manifest_misses + stats.blob_misses


@dataclass
class _Totals:
    at: float
    requests: int
    hits: int
    misses: int
    bytes_from_cache: int
    bytes_from_upstream: int

    @classmethod
    def read(cls, stats: Stats) -> _Totals:
        hits, misses = hits_and_misses(stats)
        return cls(
            time.time(),
            stats.requests,
            hits,
            misses,
            stats.bytes_served_from_cache,
            stats.bytes_fetched_from_upstream,
        )

    def since(self, earlier: _Totals) -> dict[str, float | int]:
        return {
            "t": round(self.at, 3),
            "seconds": round(self.at - earlier.at, 3),
            "requests": self.requests - earlier.requests,
            "hits": self.hits - earlier.hits,
            "misses": self.misses - earlier.misses,
            "bytes_from_cache": self.bytes_from_cache - earlier.bytes_from_cache,
            "bytes_from_upstream": self.bytes_from_upstream - earlier.bytes_from_upstream,
        }


@dataclass
class Dashboard:
    """The time series and the per-repository request counts behind the page."""

    samples: deque[dict[str, float | int]] = field(default_factory=lambda: deque(maxlen=SAMPLES))
    repositories: Counter[tuple[str, str]] = field(default_factory=Counter)
    _last: _Totals | None = None

    def count(self, upstream: str, repository: str) -> None:
        key = (upstream, repository)
        if key not in self.repositories and len(self.repositories) >= MAX_REPOSITORIES:
            self.repositories = Counter(dict(self.repositories.most_common(MAX_REPOSITORIES // 2)))
        self.repositories[key] += 1

    def sample(self, stats: Stats) -> None:
        now = _Totals.read(stats)
        if self._last is not None:
            self.samples.append(now.since(self._last))
        self._last = now

    async def sample_forever(self, stats: Stats, interval: float = SAMPLE_INTERVAL) -> None:
        self.sample(stats)
        while True:
            await asyncio.sleep(interval)
            self.sample(stats)

    def series(self, stats: Stats) -> list[dict[str, float | int]]:
        """The stored samples, then the interval under way (so the charts move between samples)."""
        series = list(self.samples)
        if self._last is not None:
            series.append(_Totals.read(stats).since(self._last))
        return series

    def top(self, n: int = TOP_REPOSITORIES) -> list[dict[str, object]]:
        return [
            {"upstream": upstream, "repository": repository, "requests": count}
            for (upstream, repository), count in self.repositories.most_common(n)
        ]


def upstream_health(upstreams: Iterable[Upstream]) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for upstream in upstreams:
        health = upstream.health
        if health.consecutive_failures >= 3:
            status = "down"
        elif health.consecutive_failures:
            status = "degraded"
        elif health.last_success is not None:
            status = "ok"
        else:
            status = "unused"  # nothing asked of it yet
        rows.append(
            {
                "name": upstream.name,
                "url": upstream.url,
                "status": status,
                "last_success": health.last_success,
                "last_error": health.last_error,
                "last_error_message": health.last_error_message,
                "consecutive_failures": health.consecutive_failures,
                "route": upstream.route.describe(),
                "requests": upstream.counters.requests,
                "manifest_gets": upstream.counters.manifest_gets,
                "quota": _quota(upstream),
            }
        )
    return rows


def _quota(upstream: Upstream) -> dict[str, object] | None:
    counters = upstream.counters
    if counters.ratelimit_seen_at is None:
        return None
    return {
        "limit": counters.ratelimit_limit,
        "remaining": counters.ratelimit_remaining,
        "window_seconds": counters.ratelimit_window_seconds,
        "source": counters.ratelimit_source,
        "seen_at": counters.ratelimit_seen_at,
    }


def payload(mirror: Mirror) -> dict[str, Any]:
    stats = mirror.stats
    hits, misses = hits_and_misses(stats)
    snapshot = mirror.snapshot()
    max_size = mirror.config.cache.max_size or 0
    return {
        "now": round(time.time(), 3),
        "stats": snapshot,
        "hits": hits,
        "misses": misses,
        "hit_ratio": hits / (hits + misses) if hits + misses else None,
        "bytes_saved": stats.bytes_served_from_cache,
        "cache": {
            "used_bytes": mirror.store.total_bytes,
            "max_bytes": max_size,
            "blobs": mirror.store.count,
            "used_fraction": mirror.store.total_bytes / max_size if max_size else None,
        },
        "interval_seconds": SAMPLE_INTERVAL,
        "series": mirror.dashboard.series(stats),
        "inflight": mirror.inflight.progress(),
        "top_repositories": mirror.dashboard.top(),
        "upstreams": upstream_health(mirror.upstreams.values()),
        "warnings": [w for w in map(anonymous_quota_warning, mirror.config.upstreams.values()) if w],
    }


async def api_route(request: Request) -> Response:
    return JSONResponse(payload(request.app.state.mirror), headers={"Cache-Control": "no-store"})


async def page_route(request: Request) -> Response:
    return FileResponse(STATIC_DIR / "dashboard.html", media_type="text/html; charset=utf-8", headers=_HEADERS)


async def static_route(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in _STATIC_FILES:
        raise NotFound("no such file")
    return FileResponse(STATIC_DIR / name, media_type=_STATIC_FILES[name], headers=_HEADERS)


dashboard_routes = [
    Route("/", page_route),
    Route("/static/{name}", static_route),
    Route("/api/dashboard", api_route),
]
