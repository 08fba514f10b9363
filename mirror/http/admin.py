"""The admin API for changes: `POST /api/rm`, `POST /api/pin` and `POST /api/tag-accept`, what
`mirror rm`, `mirror pin`, `mirror unpin` and `mirror tag accept` call on a running server."""

from __future__ import annotations

import json
from functools import partial
from typing import Any, TypedDict
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mirror.cache.pins import PinError, PinnedError
from mirror.cache.removal import Removal, RemovalError, Target, parse_target
from mirror.composition import Mirror
from mirror.registry.errors import Denied, RegistryError
from mirror.registry.mediatypes import DEFAULT_PLATFORM, is_platform

MAX_TARGETS = 10_000
MAX_BODY = 1024 * 1024  # ten thousand targets of a hundred characters fit


class Removed(TypedDict):
    """`POST /api/rm`'s answer (and `mirror rm`'s without a server): what went, and the targets not cached."""

    tags: list[str]
    manifests: list[str]
    blobs: list[str]
    unknown: list[str]


class Pinned(TypedDict, total=False):
    """`POST /api/pin`'s answer: the names pinned, or with `unpin` the names unpinned."""

    pinned: list[str]
    unpinned: list[str]


def removed(removal: Removal) -> Removed:
    """`Removal.summary()`, typed: lists of names."""
    summary = removal.summary()

    def names(key: str) -> list[str]:
        value = summary[key]
        assert isinstance(value, list)
        return [str(item) for item in value]

    return Removed(tags=names("tags"), manifests=names("manifests"), blobs=names("blobs"), unknown=names("unknown"))


class BadRequest(RegistryError):
    code, status, message = "BAD_REQUEST", 400, "the request is not what this endpoint takes"


class UnsupportedMediaType(RegistryError):
    code, status, message = "UNSUPPORTED", 415, "unsupported media type"


class BodyTooLarge(RegistryError):
    code, status, message = "SIZE_INVALID", 413, "request body too large"


class PinRefused(RegistryError):
    code, status, message = "PIN_REFUSED", 409, "the pin is refused"


async def _body(request: Request) -> bytes:
    """The body of a change, refused unless it is JSON sent by a same-origin client, and at most MAX_BODY.

    A browser sends an HTML form (any page the admin visits can hold one) as `text/plain` or a form
    type with the cached Basic login; JSON cannot be sent cross-site without a preflight, and
    Origin and Sec-Fetch-Site tell a cross-site request from the CLI or the dashboard's own.
    """
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        raise UnsupportedMediaType("changes are sent as Content-Type: application/json")
    site = request.headers.get("sec-fetch-site")
    origin = request.headers.get("origin")
    if site not in (None, "same-origin", "none") or (origin is not None and not _same_origin(origin, request)):
        raise Denied("a change from another site is refused (Origin or Sec-Fetch-Site)")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY):
        raise BodyTooLarge(f"a change is at most {MAX_BODY} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise BodyTooLarge(f"a change is at most {MAX_BODY} bytes")
    return bytes(body)


def _same_origin(origin: str, request: Request) -> bool:
    parsed = urlsplit(origin)
    return f"{parsed.scheme}://{parsed.netloc}" == f"{request.url.scheme}://{request.headers.get('host', '')}"


async def _targets(request: Request, usage: str) -> tuple[list[Target], dict[str, Any]]:
    try:
        data = json.loads(await _body(request))
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
        raise BadRequest(_shortened(str(exc))) from None


def _shortened(text: str, limit: int = 300) -> str:
    """Bad input is echoed, but never whole: a request cannot make the answer large."""
    return text if len(text) <= limit else text[:limit] + "…"


async def remove_route(mirror: Mirror, request: Request) -> Response:
    """`{"targets": ["alpine:3.19", "sha256:…"], "blobs": false, "force": false}` → what was removed;
    a pinned image's content only with `force`."""
    targets, data = await _targets(request, '{"targets": ["IMAGE or DIGEST", …], "blobs": false, "force": false}')
    try:
        removal = await mirror.remove(targets, bool(data.get("blobs")), force=data.get("force") is True)
    except PinnedError as exc:
        raise PinRefused(str(exc)) from None
    return JSONResponse(removed(removal))


PIN_USAGE = (
    '{"targets": ["IMAGE", …], "unpin": false, "fetch": false, "platforms": ["OS/ARCH", …], "all_platforms": false}'
)


async def pin_route(mirror: Mirror, request: Request) -> Response:
    """`{"targets": ["alpine:3.19"], "unpin": false}` → the names pinned (or unpinned), as cached;
    with `"fetch": true`, what is not cached is fetched first (an index's `platforms`, default
    linux/amd64, or `all_platforms`), and the answer comes once it is."""
    targets, data = await _targets(request, PIN_USAGE)
    if any(target.upstream is None for target in targets):
        raise BadRequest("pin images by name (alpine:3.19, ghcr.io/org/app@sha256:…), not bare digests")
    fetch = data.get("fetch") is True
    try:
        done = await mirror.pin(targets, unpin=bool(data.get("unpin")), fetch=fetch, platforms=_platforms(data, fetch))
    except PinError as exc:
        raise PinRefused(str(exc)) from None
    return JSONResponse(Pinned(unpinned=done) if data.get("unpin") else Pinned(pinned=done))


def _platforms(data: dict[str, Any], fetch: bool) -> tuple[str, ...] | None:
    """An index's platforms to pin (None: all; with `fetch` linux/amd64 unless told, else all cached)."""
    asked = data.get("platforms")
    if asked is not None and (not isinstance(asked, list) or not asked or not all(is_platform(p) for p in asked)):
        raise BadRequest(f"expected platforms like linux/arm64: {PIN_USAGE}")
    if data.get("all_platforms") is True:
        return None
    if asked is not None:
        return tuple(asked)
    return (DEFAULT_PLATFORM,) if fetch else None


class Accepted(TypedDict):
    """`POST /api/tag-accept`'s answer: each tag and the digest it serves from now on (None: never seen)."""

    accepted: dict[str, str | None]


async def tag_accept_route(mirror: Mirror, request: Request) -> Response:
    """`{"targets": ["alpine:3.19"]}` → each immutable tag takes the upstream's newest digest."""
    targets, _ = await _targets(request, '{"targets": ["IMAGE:TAG", …]}')
    if any(target.upstream is None or target.repository is None or target.is_digest for target in targets):
        raise BadRequest("name tags (alpine:3.19, ghcr.io/org/app:1.0), not digests")
    accepted: dict[str, str | None] = {}
    for target in targets:
        assert target.upstream is not None and target.repository is not None
        upstream = mirror.upstream_for(target.upstream)
        accepted[target.text] = await mirror.accept_tag(upstream.name, target.repository, target.reference)
    return JSONResponse(Accepted(accepted=accepted))


def admin_routes(mirror: Mirror) -> list[Route]:
    return [
        Route("/api/rm", partial(remove_route, mirror), methods=["POST"]),
        Route("/api/pin", partial(pin_route, mirror), methods=["POST"]),
        Route("/api/tag-accept", partial(tag_accept_route, mirror), methods=["POST"]),
    ]
