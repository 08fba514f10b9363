"""The registry API's routes and the error handlers (the app is assembled in `mirror.http.assembly`)."""

from __future__ import annotations

import logging
from functools import partial
from urllib.parse import urlencode

import anyio.to_thread
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from mirror import __version__
from mirror.cache.journal import history_rows
from mirror.composition import Mirror
from mirror.http.fleet import stats_of
from mirror.http.responses import (
    API_VERSION_HEADER,
    blob_headers,
    error_response,
    json_body,
    manifest_headers,
    serve_blob,
)
from mirror.http.target import Target, target_of
from mirror.link import is_background
from mirror.proxy import CacheStatus, ManifestAnswer
from mirror.registry.errors import BadRequest, NotFound, RegistryError, Unsupported
from mirror.registry.mediatypes import OCI_INDEX
from mirror.registry.paging import lexical, page, parse_page_size
from mirror.registry.reference import Digest, parse_digest, parse_reference, repository_and_tag, repository_named
from mirror.registry.referrers import FILTERS_APPLIED_HEADER, referrers_page
from mirror.registry.route import CATALOG_PATH
from mirror.stats import prometheus
from mirror.upstream import Upstream

log = logging.getLogger(__name__)

_READ_METHODS = ("GET", "HEAD")


def registry_routes(mirror: Mirror) -> list[Route]:
    """The registry API, /stats, /metrics, /healthz and /api/images; each handler is given the mirror."""
    every = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]  # a write is refused in the spec's JSON
    return [
        Route("/v2/", partial(api_root, mirror), methods=every),
        Route(CATALOG_PATH, partial(catalog_route, mirror), methods=every),
        Route("/v2/{path:path}", partial(registry, mirror), methods=every),
        Route("/stats", partial(stats_route, mirror)),
        Route("/metrics", partial(metrics_route, mirror)),
        Route("/healthz", healthz),
        Route("/api/images", partial(images_route, mirror)),
        Route("/api/images/{repository:path}", partial(images_route, mirror)),
        Route("/api/history", partial(history_route, mirror)),
    ]


async def api_root(mirror: Mirror, request: Request) -> Response:
    if request.method not in _READ_METHODS:
        raise Unsupported()
    mirror.stats.requests += 1
    return JSONResponse({}, headers=dict([API_VERSION_HEADER]))


async def registry(mirror: Mirror, request: Request) -> Response:
    mirror.stats.requests += 1
    if request.method not in _READ_METHODS:
        raise Unsupported("this registry mirror is read-only", detail={"method": request.method})
    target = target_of(request.scope)  # read once, before access control judged it
    if isinstance(target, RegistryError):
        raise target
    if target is None:
        raise NotFound("no such registry API route")
    upstream, repository, api = target.upstream, target.repository, target.api
    request.state.upstream = upstream.name
    upstream.policy.check(repository)  # allow and deny, before any upstream request
    mirror.traffic.count(upstream.name, repository)
    if api.kind == "manifests":
        return await _manifest(request, mirror, upstream, repository, api.reference)
    if api.kind == "blobs":
        return await _blob(request, mirror, upstream, repository, parse_digest(api.reference))
    if api.kind == "referrers":
        return await _referrers(request, mirror, upstream, repository, parse_digest(api.reference))
    return await _tags(request, mirror, upstream, repository, target.name, api.name)


async def _referrers(request: Request, mirror: Mirror, upstream: Upstream, repository: str, digest: Digest) -> Response:
    """Every referrer, kept whole and paged here (`n`, `last`); filtered here, whatever the upstream did."""
    artifact_type = request.query_params.get("artifactType")
    n = parse_page_size(request.query_params.get("n"))
    descriptors = await mirror.proxy.referrers(upstream, repository, digest)
    body, next_last = referrers_page(descriptors, artifact_type, n, request.query_params.get("last"))
    headers = {API_VERSION_HEADER[0]: API_VERSION_HEADER[1]}
    if artifact_type is not None:
        headers[FILTERS_APPLIED_HEADER] = "artifactType"
    if next_last is not None:
        query = {"n": str(n), "last": next_last} if n is not None else {"last": next_last}
        if artifact_type is not None:
            query["artifactType"] = artifact_type
        headers["Link"] = _next_link(request, request.url.path, query)
    return Response(body if request.method == "GET" else b"", headers=headers, media_type=OCI_INDEX)


async def _tags(
    request: Request, mirror: Mirror, upstream: Upstream, repository: str, name: str, path_name: str
) -> Response:
    """The mirror pages the whole list itself, in the spec's order, whatever the upstream's paging."""
    n = parse_page_size(request.query_params.get("n"))
    last = request.query_params.get("last")
    tags = await mirror.proxy.tag_list(upstream, repository)
    chosen, next_last = page(tags, n, last)
    headers = {API_VERSION_HEADER[0]: API_VERSION_HEADER[1]}
    if next_last is not None:
        headers["Link"] = _next_link(request, f"/v2/{path_name}/tags/list", {"n": str(len(chosen)), "last": next_last})
    body = json_body({"name": name, "tags": chosen}) if request.method == "GET" else b""
    return Response(body, headers=headers, media_type="application/json")


def _next_link(request: Request, path: str, query: dict[str, str]) -> str:
    """The next page's `Link`: back at this mirror, with the client's registry selector (path prefix or ?ns=)."""
    target = target_of(request.scope)
    if isinstance(target, Target) and target.api.ns is not None:
        query = {**query, "ns": target.api.ns}
    return f'<{path}?{urlencode(query)}>; rel="next"'


async def _manifest(request: Request, mirror: Mirror, upstream: Upstream, repository: str, reference: str) -> Response:
    answer: ManifestAnswer = await mirror.proxy.manifest(
        upstream, repository, parse_reference(reference), request.headers.getlist("accept")
    )
    manifest = answer.manifest
    if answer.cache_status is not CacheStatus.MISS and request.method == "GET":
        mirror.stats.bytes_served_from_cache += len(manifest.body)
    body = manifest.body if request.method == "GET" else b""
    headers = manifest_headers(manifest, answer.cache_status)
    if answer.age is not None:
        headers["Age"] = str(int(answer.age))  # so that a mirror in front keeps it stale too
    headers.update(answer.upstream_headers)
    return Response(body, headers=headers)


async def _blob(request: Request, mirror: Mirror, upstream: Upstream, repository: str, digest: Digest) -> Response:
    if request.method == "HEAD":
        size = await mirror.proxy.blob_size(upstream, repository, digest)
        return Response(b"", headers={API_VERSION_HEADER[0]: API_VERSION_HEADER[1], **blob_headers(str(digest), size)})
    background = is_background(request.headers.get("priority"))  # `mirror prefetch`
    body = await mirror.proxy.blob(upstream, repository, digest, background=background)
    return await serve_blob(request, body, digest)


async def catalog_route(mirror: Mirror, request: Request) -> Response:
    """The repositories the mirror holds: the default upstream's by name, the others' under their registry host."""
    if request.method not in _READ_METHODS:
        raise Unsupported("this registry mirror is read-only", detail={"method": request.method})
    n = parse_page_size(request.query_params.get("n"))
    last = request.query_params.get("last")
    held = await anyio.to_thread.run_sync(mirror.directory.metadata.repositories)
    default = mirror.config.server.default_upstream
    names = sorted(
        {repository if upstream == default else f"{upstream}/{repository}" for upstream, repository in held},
        key=lexical,
    )
    chosen, next_last = page(names, n, last)
    headers = {API_VERSION_HEADER[0]: API_VERSION_HEADER[1]}
    if next_last is not None:
        headers["Link"] = f'<{CATALOG_PATH}?{urlencode({"n": str(len(chosen)), "last": next_last})}>; rel="next"'
    body = json_body({"repositories": chosen}) if request.method == "GET" else b""
    return Response(body, headers=headers, media_type="application/json")


async def stats_route(mirror: Mirror, request: Request) -> Response:
    return await stats_of(mirror, request.query_params.get("scope"))


async def metrics_route(mirror: Mirror, request: Request) -> Response:
    info = f'# TYPE mirror_info gauge\nmirror_info{{version="{__version__}",config_hash="{mirror.config_hash}"}} 1\n'
    text = prometheus(mirror.snapshot()) + mirror.stats.latencies.prometheus() + info
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")


async def images_route(mirror: Mirror, request: Request) -> Response:
    # Some registry APIs spell a repository's slashes as `$`; accept both.
    repository = request.path_params.get("repository") or request.query_params.get("repository")
    default = mirror.config.server.default_upstream
    only = repository_named(repository.replace("$", "/"), default) if repository else None
    from mirror.cache import inventory  # the dashboard's and `mirror ls`'s: loaded when first asked

    pinned, fetching = mirror.store.pinned, mirror.pins.fetching_digests
    rows = await anyio.to_thread.run_sync(inventory.list_images, mirror.directory, only, pinned, fetching)
    return JSONResponse(rows)


async def history_route(mirror: Mirror, request: Request) -> Response:
    """`?image=alpine:3.19` (one tag) or `?image=alpine` (every tag): the tag journal's rows."""
    image = request.query_params.get("image")
    if not image:
        raise BadRequest("name an image: /api/history?image=alpine:3.19")
    upstream, repository, tag = repository_and_tag(image, mirror.config.server.default_upstream)
    rows = await anyio.to_thread.run_sync(history_rows, mirror.directory, upstream, repository, tag)
    return JSONResponse(rows)


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def registry_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RegistryError)
    if exc.code == "DENIED":
        request.state.refused = exc.message  # the access log says why (a signature policy's reason)
    return error_response(exc)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        return error_response(Unsupported())
    return error_response(
        RegistryError(exc.detail, status=exc.status_code, code="NOT_FOUND" if exc.status_code == 404 else "UNKNOWN")
    )


async def internal_error(request: Request, exc: Exception) -> Response:
    log.exception("internal error on %s %s", request.method, request.url.path)
    return error_response(RegistryError("internal error"))
