"""The dashboard: a page at `/`, its static files, and the JSON it polls at `/api/dashboard`.

The page (mirror/http/static/) is plain HTML, CSS and JS served by the mirror itself: it needs
no network beyond the mirror. Counters are sampled every few seconds into an in-memory
ring buffer (the last hour), so the charts need no external metrics store.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from mirror.composition import Mirror
from mirror.http.fleet import fleet_stats
from mirror.registry.errors import NotFound
from mirror.traffic import SAMPLE_INTERVAL, hits_and_misses
from mirror.upstream import Upstream, anonymous_quota_warning
from mirror.upstream.health import Health

STATIC_DIR = Path(__file__).parent / "static"

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


def upstream_health(upstreams: Iterable[Upstream]) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for upstream in upstreams:
        health = upstream.health
        status = "offline" if upstream.offline else _status(health)
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
                "offline": upstream.offline,
                "mirrors": [
                    {"url": e.url, "status": _status(e.health), "last_error_message": e.health.last_error_message}
                    for e in upstream.endpoints
                    if e.is_mirror
                ],
            }
        )
    return rows


def _status(health: Health) -> str:
    if health.consecutive_failures >= 3:
        return "down"
    if health.consecutive_failures:
        return "degraded"
    if health.last_success is not None:
        return "ok"
    return "unused"  # nothing asked of it yet


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
        "series": mirror.traffic.series(stats),
        "inflight": mirror.inflight.progress(),
        "top_repositories": mirror.traffic.top(),
        "upstreams": upstream_health(mirror.upstreams.values()),
        "warnings": [
            warning
            for upstream in mirror.config.upstreams.values()
            if (warning := anonymous_quota_warning(upstream, offline=mirror.config.server.offline))
        ],
    }


def dashboard_routes(mirror: Mirror) -> list[Route]:
    async def api_route(request: Request) -> Response:
        data = payload(mirror)
        if mirror.fleet is not None:
            data["fleet"] = await fleet_stats(mirror)  # every replica, from Redis
        return JSONResponse(data, headers={"Cache-Control": "no-store"})

    return [
        Route("/", page_route),
        Route("/static/{name}", static_route),
        Route("/api/dashboard", api_route),
    ]


async def page_route(request: Request) -> Response:
    return FileResponse(STATIC_DIR / "dashboard.html", media_type="text/html; charset=utf-8", headers=_HEADERS)


async def static_route(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in _STATIC_FILES:
        raise NotFound("no such file")
    return FileResponse(STATIC_DIR / name, media_type=_STATIC_FILES[name], headers=_HEADERS)
