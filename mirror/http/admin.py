"""The admin API for changes: `POST /api/rm`, what `mirror rm` calls on a running server."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mirror.cache.removal import RemovalError, parse_target
from mirror.composition import Mirror
from mirror.registry.errors import RegistryError

MAX_TARGETS = 10_000


class BadRequest(RegistryError):
    code, status, message = "BAD_REQUEST", 400, "the request is not what this endpoint takes"


async def remove_route(request: Request) -> Response:
    """`{"targets": ["alpine:3.19", "sha256:…"], "blobs": false}` → what was removed."""
    mirror: Mirror = request.app.state.mirror
    try:
        data = await request.json()
    except ValueError:
        raise BadRequest("expected a JSON body") from None
    targets = data.get("targets") if isinstance(data, dict) else None
    if not isinstance(targets, list) or not targets or len(targets) > MAX_TARGETS:
        raise BadRequest('expected {"targets": ["IMAGE or DIGEST", …], "blobs": false}')
    try:
        parsed = [parse_target(target) for target in targets if isinstance(target, str)]
    except RemovalError as exc:
        raise BadRequest(str(exc)) from None
    if len(parsed) != len(targets):
        raise BadRequest("every target must be a string")
    removal = await mirror.remove(parsed, bool(data.get("blobs")))
    return JSONResponse(removal.summary())


def admin_routes() -> list[Route]:
    return [Route("/api/rm", remove_route, methods=["POST"])]
