"""Draining on SIGTERM: /readyz turns 503 at once, and work in flight gets `drain_timeout` to finish.

uvicorn stops listening the moment a signal arrives, then gives requests a fixed grace. A
mirror behind a balancer needs another order: keep accepting, so that /readyz can say 503
and the balancer sends new work elsewhere, while client streams and upstream downloads in
flight finish; exit as soon as nothing is left, or when `drain_timeout` runs out. Then
uvicorn's own shutdown runs, and the app's lifespan cancels the downloads still running
(each is kept as a partial file, which the next start resumes).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from collections.abc import Sized
from types import FrameType
from typing import Protocol

import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger(__name__)

READYZ_PATH = "/readyz"
# uvicorn's graceful shutdown, after the drain: time for the last bytes of finished
# responses to leave. What still runs then has had its drain_timeout, and is cancelled.
AFTER_DRAIN_GRACE = 1  # seconds; uvicorn takes an int
_TICK = 0.1  # seconds between looks at the work in progress, as uvicorn's main loop


class Drain:
    """Whether the server drains, and the work that holds a drain open."""

    def __init__(self, downloads: Sized) -> None:
        self.downloads = downloads  # upstream downloads in flight (InflightDownloads)
        self.requests = 0  # requests the app is serving, /readyz aside (counted by CountRequests)
        self.signal: str | None = None  # the signal that started the drain

    @property
    def draining(self) -> bool:
        return self.signal is not None

    def idle(self) -> bool:
        return self.requests == 0 and len(self.downloads) == 0

    def describe(self) -> str:
        return f"{_count(self.requests, 'request')} and {_count(len(self.downloads), 'download')}"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


class CountRequests:
    """ASGI middleware: a request counts from its start to the end of its response.

    Connections do not count: an idle keep-alive connection holds no drain open. Warm
    answers written by the HTTP protocol itself (`mirror.http.server`) never wait, so they
    need no count.
    """

    def __init__(self, app: ASGIApp, *, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == READYZ_PATH:
            await self.app(scope, receive, send)
            return
        self.drain.requests += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.drain.requests -= 1


def readiness_route(drain: Drain) -> Route:
    """`GET /readyz`: 200 while serving, 503 from the first SIGTERM on (/healthz stays 200)."""

    async def readyz(request: Request) -> Response:
        if drain.draining:
            return JSONResponse({"ready": False, "draining": True}, status_code=503)
        return JSONResponse({"ready": True})

    return Route(READYZ_PATH, readyz)


class Reloading(Protocol):
    def reload(self) -> bool: ...


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain before its shutdown.

    The first SIGTERM or SIGINT starts the drain; a second one ends it at once, and the
    normal shutdown follows without grace; one after the drain also skips the app's shutdown
    (uvicorn's force exit).
    """

    def __init__(self, config: uvicorn.Config, drain: Drain, timeout: float, reloader: Reloading | None = None) -> None:
        super().__init__(config)
        self.drain = drain
        self.timeout = timeout
        self.reloader = reloader
        self._cut = False  # a second signal ended the drain
        self._drained = False  # the drain is over: uvicorn's shutdown runs

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: flags only. The signal is not recorded for uvicorn to raise again
        # once the server has stopped, so a drained server exits with status 0.
        if not self.drain.draining:
            self.drain.signal = signal.Signals(sig).name
            self.should_exit = True  # ends the main loop; shutdown() drains first
        elif not self._drained:
            self._cut = True
        else:
            self.force_exit = True

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.reloader is not None:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.reloader.reload)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.drain.draining:
            await self._drain()
        self._drained = True
        if self._cut:
            self.config.timeout_graceful_shutdown = 0  # asked twice: no grace either
        await super().shutdown(sockets)  # closes the listeners, then the connections

    async def _drain(self) -> None:
        started = time.monotonic()
        log.info(
            "%s: draining, /readyz answers 503; %s in progress get up to %g s (drain_timeout)",
            self.drain.signal,
            self.drain.describe(),
            self.timeout,
        )
        ticks = 0
        while not self.drain.idle() and not self._cut and time.monotonic() - started < self.timeout:
            await asyncio.sleep(_TICK)
            ticks += 1
            await self.on_tick(ticks)  # keeps the Date header fresh, as the main loop did
        self._log_end(time.monotonic() - started)

    def _log_end(self, elapsed: float) -> None:
        if self.drain.idle():
            log.info("drained in %.1f s: nothing left in progress, shutting down", elapsed)
            return
        reason = "a second signal" if self._cut else f"drain_timeout ({self.timeout:g} s)"
        kept = "; the downloads are kept in partial/ for the next start" if len(self.drain.downloads) else ""
        log.warning(
            "drain ended by %s after %.1f s: %s still in progress are cut%s",
            reason,
            elapsed,
            self.drain.describe(),
            kept,
        )
