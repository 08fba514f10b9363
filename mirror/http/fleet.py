"""The fleet's routes: replica-to-replica blobs (`/_fleet/blobs/<digest>`, signed), and
`/stats?scope=fleet`."""

from __future__ import annotations

from functools import partial
from typing import Any, Literal, TypedDict

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mirror.composition import Mirror
from mirror.fleet.signing import AUTH_HEADER, PEER_PATH, verify
from mirror.http.responses import serve_blob
from mirror.registry.errors import BlobUnknown, Denied, NotFound
from mirror.registry.reference import parse_digest


async def peer_blob(mirror: Mirror, request: Request) -> Response:
    """A blob this replica holds, or is downloading, for another replica; never a new download."""
    if mirror.fleet is None:
        raise NotFound("this mirror is not in a fleet")
    signed = request.headers.get(AUTH_HEADER, "")
    if not verify(mirror.fleet.secret, signed, request.method, mirror.fleet.me, request.url.path):
        raise Denied("replica-to-replica requests are signed with the fleet's secret, for this replica, in time")
    digest = parse_digest(request.path_params["digest"])
    body = await mirror.proxy.local_blob(digest)
    if body is None:
        raise BlobUnknown(detail={"digest": str(digest)})
    return await serve_blob(request, body, digest)


class FleetTotals(TypedDict):
    replicas: int
    blobs: int
    bytes: int
    requests: int


class FleetStats(TypedDict):
    """`/stats?scope=fleet` (`mirror stats --fleet`, the dashboard): the replicas' records, as they keep them in
    Redis (peer_url, blobs, bytes, requests, hit_ratio…), and their totals."""

    scope: Literal["fleet"]
    redis: str
    replicas: list[dict[str, Any]]
    totals: FleetTotals


async def fleet_stats(mirror: Mirror) -> FleetStats:
    """Every live replica's record, and the fleet's totals."""
    assert mirror.fleet is not None
    replicas = sorted(await mirror.fleet.members(), key=lambda member: str(member.get("peer_url")))
    return {
        "scope": "fleet",
        "redis": "up" if mirror.fleet.up else "down",
        "replicas": replicas,
        "totals": {
            "replicas": len(replicas),
            "blobs": sum(int(r.get("blobs") or 0) for r in replicas),
            "bytes": sum(int(r.get("bytes") or 0) for r in replicas),
            "requests": sum(int(r.get("requests") or 0) for r in replicas),
        },
    }


async def stats_of(mirror: Mirror, scope: str | None) -> JSONResponse:
    if scope == "fleet" and mirror.fleet is not None:
        return JSONResponse(await fleet_stats(mirror))
    return JSONResponse(mirror.snapshot())


def fleet_routes(mirror: Mirror) -> list[Route]:
    return [Route(PEER_PATH + "{digest}", partial(peer_blob, mirror), methods=["GET", "HEAD"])]
