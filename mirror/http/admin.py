"""The admin API for changes: `POST /api/rm` and `POST /api/pin`, what `mirror rm`, `mirror pin` and
`mirror unpin` call on a running server."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mirror.cache.pins import PinError
from mirror.cache.removal import RemovalError, Target, parse_target
from mirror.composition import Mirror
from mirror.registry.errors import RegistryError

MAX_TARGETS = 10_000


class BadRequest(RegistryError):
    code, status, message = "BAD_REQUEST", 400, "the request is not what this endpoint takes"


class PinRefused(RegistryError):
    code, status, message = "PIN_REFUSED", 409, "the pin is refused"


async def _targets(request: Request, usage: str) -> tuple[list[Target], dict[str, Any]]:
    try:
        data = await request.json()
    except ValueError:
        raise BadRequest("expected a JSON body") from None
    targets = data.get("targets") if isinstance(data, dict) else None
    if not isinstance(targets, list) or not targets or len(targets) > MAX_TARGETS:
        raise BadRequest(f"expected {usage}")
    if not all(isinstance(target, str) for target in targets):
        raise BadRequest("every target must be a string")
    try:
        return [parse_target(target) for target in targets], data
    except RemovalError as exc:
        raise BadRequest(str(exc)) from None


async def remove_route(request: Request) -> Response:
    """`{"targets": ["alpine:3.19", "sha256:…"], "blobs": false}` → what was removed."""
    mirror: Mirror = request.app.state.mirror
    targets, data = await _targets(request, '{"targets": ["IMAGE or DIGEST", …], "blobs": false}')
    removal = await mirror.remove(targets, bool(data.get("blobs")))
    return JSONResponse(removal.summary())


async def pin_route(request: Request) -> Response:
    """`{"targets": ["alpine:3.19"], "unpin": false}` → the names pinned (or unpinned)."""
    mirror: Mirror = request.app.state.mirror
    targets, data = await _targets(request, '{"targets": ["IMAGE", …], "unpin": false}')
    if any(target.upstream is None for target in targets):
        raise BadRequest("pin images by name (alpine:3.19, ghcr.io/org/app@sha256:…), not bare digests")
    try:
        done = await mirror.pin(targets, unpin=bool(data.get("unpin")))
    except PinError as exc:
        raise PinRefused(str(exc)) from None
    return JSONResponse({"unpinned" if data.get("unpin") else "pinned": done})


def admin_routes() -> list[Route]:
    return [Route("/api/rm", remove_route, methods=["POST"]), Route("/api/pin", pin_route, methods=["POST"])]
