"""The server, assembled in one place: the app, the protocol with its warm answers, and uvicorn.

One `AccessSettings` is made here and shared by access control, the warm answers and the
reloader, so a SIGHUP changes what all three enforce at once. Every route is given the
mirror by its factory; nothing is handed round through `app.state`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware

from mirror.composition import Mirror
from mirror.config import Config
from mirror.http.access import AccessControl, AccessSettings, access_settings
from mirror.http.accesslog import AccessLog
from mirror.http.admin import admin_routes
from mirror.http.app import http_error, internal_error, registry_error, registry_routes
from mirror.http.dashboard import dashboard_routes
from mirror.http.drain import AFTER_DRAIN_GRACE, CountRequests, Drain, DrainingServer, readiness_route
from mirror.http.fastpath import WarmAnswers, WarmManifests
from mirror.http.fleet import fleet_routes
from mirror.http.reload import Reloader
from mirror.http.server import BoundedHttpToolsProtocol, bounded_protocol
from mirror.http.target import ReadTarget
from mirror.registry.errors import RegistryError


@dataclass(frozen=True, slots=True)
class Assembly:
    """The parts of one server around a built mirror; `server()` puts them in uvicorn."""

    mirror: Mirror
    drain: Drain  # shared by the app (/readyz, requests counted) and the server that drains on SIGTERM
    access: AccessSettings
    app: Starlette
    answers: WarmAnswers
    protocol: type[BoundedHttpToolsProtocol]  # uvicorn's HTTP protocol, asking `answers` first

    def server(self, reload_config: Callable[[], Config] | None = None) -> DrainingServer:
        """uvicorn's server for these parts; on SIGHUP it applies `reload_config()` (the config loaded
        again, as at start-up) when one is given."""
        config = self.mirror.config
        server_config = uvicorn.Config(
            self.app,
            host=config.server.host,
            port=config.server.port,
            log_level=config.server.log_level,
            log_config=None,
            access_log=False,  # mirror.access logs each request, with its cache status
            timeout_graceful_shutdown=AFTER_DRAIN_GRACE,  # the drain came first
            ssl_certfile=config.server.tls_cert,
            ssl_keyfile=config.server.tls_key,
            server_header=False,
            http=self.protocol,
        )
        reloader = None
        if reload_config is not None:
            reloader = Reloader(
                reload_config,
                self.mirror,
                self.access,
                self.answers,
                self.protocol.remembered,
                lambda: server_config.ssl,  # made when uvicorn loads its config
            )
        return DrainingServer(server_config, self.drain, config.server.drain_timeout, reloader)


def assemble(mirror: Mirror) -> Assembly:
    """The server's parts around `mirror`, from its config; reads the htpasswd files (ConfigError names the key)."""
    config = mirror.config
    drain = Drain(mirror.inflight)
    access = access_settings(config.auth)
    answers = WarmAnswers(mirror, access, json_log=config.log.format == "json")
    app = _app(mirror, drain, access)
    return Assembly(mirror, drain, access, app, answers, bounded_protocol(config.server.head_timeout, answers))


def _app(mirror: Mirror, drain: Drain, access: AccessSettings) -> Starlette:
    """The ASGI app; its lifespan starts and closes the mirror's background work."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await mirror.start()
        try:
            yield
        finally:
            await mirror.close()

    routes = [
        *registry_routes(mirror),
        readiness_route(drain),
        *admin_routes(mirror),
        *fleet_routes(mirror),
        *dashboard_routes(mirror),
    ]
    handlers = {RegistryError: registry_error, HTTPException: http_error, Exception: internal_error}
    middleware = [
        Middleware(CountRequests, drain=drain),
        Middleware(ReadTarget, mirror=mirror),
        Middleware(AccessLog, json_format=mirror.config.log.format == "json", latencies=mirror.stats.latencies),
        Middleware(AccessControl, settings=access),
        Middleware(WarmManifests, mirror=mirror),
    ]
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers, middleware=middleware)
