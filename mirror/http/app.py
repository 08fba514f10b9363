"""The ASGI application: routes, lifespan and the error handler."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlencode

import anyio.to_thread
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from mirror import __version__
from mirror.cache import inventory
from mirror.composition import Mirror
from mirror.http.access import AccessControl, access_settings
from mirror.http.accesslog import AccessLog
from mirror.http.admin import admin_routes
from mirror.http.dashboard import dashboard_routes
from mirror.http.drain import CountRequests, Drain, readiness_route
from mirror.http.fastpath import WarmManifests
from mirror.http.fleet import fleet_routes, stats_of
from mirror.http.responses import (
    API_VERSION_HEADER,
    blob_headers,
    error_response,
    json_body,
    manifest_headers,
    serve_blob,
)
from mirror.http.target import ReadTarget, Target, target_of
from mirror.link import is_background
from mirror.proxy import ManifestAnswer
from mirror.registry.errors import NotFound, RegistryError, Unsupported
from mirror.registry.mediatypes import OCI_INDEX
from mirror.registry.paging import lexical, page, parse_page_size
from mirror.registry.reference import Digest, parse_digest, parse_reference, repository_named
from mirror.registry.referrers import FILTERS_APPLIED_HEADER, referrers_page
from mirror.registry.route import CATALOG_PATH
from mirror.stats import prometheus
from mirror.upstream import Upstream

log = logging.getLogger(__name__)

_READ_METHODS = ("GET", "HEAD")


def _mirror(request: Request) -> Mirror:
    mirror: Mirror = request.app.state.mirror
    return mirror


async def api_root(request: Request) -> Response:
    if request.method not in _READ_METHODS:
        raise Unsupported()
    _mirror(request).stats.requests += 1
    return JSONResponse({}, headers=dict([API_VERSION_HEADER]))


async def registry(request: Request) -> Response:
    mirror = _mirror(request)
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
    if answer.cache_status != "MISS" and request.method == "GET":
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


async def catalog_route(request: Request) -> Response:
    """The repositories the mirror holds: the default upstream's by name, the others' under their registry host."""
    if request.method not in _READ_METHODS:
        raise Unsupported("this registry mirror is read-only", detail={"method": request.method})
    mirror = _mirror(request)
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


async def stats_route(request: Request) -> Response:
    return await stats_of(_mirror(request), request.query_params.get("scope"))


async def metrics_route(request: Request) -> Response:
    mirror = _mirror(request)
    info = f'# TYPE mirror_info gauge\nmirror_info{{version="{__version__}",config_hash="{mirror.config_hash}"}} 1\n'
    text = prometheus(mirror.snapshot()) + mirror.stats.latencies.prometheus() + info
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")


async def images_route(request: Request) -> Response:
    mirror = _mirror(request)
    # Some registry APIs spell a repository's slashes as `$`; accept both.
    repository = request.path_params.get("repository") or request.query_params.get("repository")
    default = mirror.config.server.default_upstream
    only = repository_named(repository.replace("$", "/"), default) if repository else None
    rows = await anyio.to_thread.run_sync(inventory.list_images, mirror.directory, only, mirror.store.pinned)
    return JSONResponse(rows)


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def registry_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RegistryError)
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


def create_app(mirror: Mirror, drain: Drain | None = None) -> Starlette:
    """The ASGI app around a built mirror; its lifespan starts and closes the mirror's background work.

    `drain` is shared with the server that drains on SIGTERM (`mirror.http.drain`).
    """
    config = mirror.config
    drain = drain if drain is not None else Drain(mirror.inflight)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await mirror.start()
        try:
            yield
        finally:
            await mirror.close()

    all_methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    routes = [
        Route("/v2/", api_root, methods=all_methods),
        Route(CATALOG_PATH, catalog_route, methods=all_methods),
        Route("/v2/{path:path}", registry, methods=all_methods),
        Route("/stats", stats_route),
        Route("/metrics", metrics_route),
        Route("/healthz", healthz),
        readiness_route(drain),
        *admin_routes(),
        *fleet_routes(),
        Route("/api/images", images_route),
        Route("/api/images/{repository:path}", images_route),
        *dashboard_routes(mirror),
    ]
    handlers = {RegistryError: registry_error, HTTPException: http_error, Exception: internal_error}
    access = access_settings(config.auth)
    middleware = [
        Middleware(CountRequests, drain=drain),
        Middleware(ReadTarget, mirror=mirror),
        Middleware(AccessLog, json_format=config.log.format == "json", latencies=mirror.stats.latencies),
        Middleware(AccessControl, settings=access),
    ]
    middleware.append(Middleware(WarmManifests, mirror=mirror))
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers, middleware=middleware)
    app.state.mirror = mirror  # for the routes: Starlette's way to hand them shared state
    app.state.access = access  # for a reload
    return app
