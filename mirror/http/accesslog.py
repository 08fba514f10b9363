"""One access-log line per request, with the cache status, bytes, duration and upstream."""

from __future__ import annotations

import json
import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("mirror.access")


class AccessLog:
    """ASGI middleware; the cache status comes from the response's `X-Cache` header."""

    def __init__(self, app: ASGIApp, *, json_format: bool) -> None:
        self.app = app
        self.json_format = json_format

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not log.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0
        sent = 0
        cache = "-"

        async def logging_send(message: Message) -> None:
            nonlocal status, sent, cache
            if message["type"] == "http.response.start":
                status = message["status"]
                for name, value in message.get("headers", []):
                    if name == b"x-cache":
                        cache = value.decode("latin-1")
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, logging_send)
        finally:
            self._write(scope, status, sent, cache, (time.perf_counter() - started) * 1000)

    def _write(self, scope: Scope, status: int, sent: int, cache: str, duration_ms: float) -> None:
        client = scope.get("client") or ("-", 0)
        path = scope.get("path", "")
        if scope.get("query_string"):
            path += "?" + scope["query_string"].decode("latin-1")
        upstream = scope.get("state", {}).get("upstream", "-")
        write_line(self.json_format, client[0], scope["method"], path, status, sent, duration_ms, cache, upstream)


def write_line(
    json_format: bool,
    client: str,
    method: str,
    path: str,
    status: int,
    sent: int,
    duration_ms: float,
    cache: str,
    upstream: str,
) -> None:
    """One request's line, as JSON or as text."""
    if json_format:
        record = {
            "client": client,
            "method": method,
            "path": path,
            "status": status,
            "bytes": sent,
            "duration_ms": round(duration_ms, 2),
            "cache": cache,
            "upstream": upstream,
        }
        log.info(json.dumps(record))
    else:
        # repr-style quoting keeps a crafted path from forging extra log lines.
        log.info(
            '%s "%s %s" %d %d %.1fms %s %s',
            client,
            method,
            json.dumps(path)[1:-1],
            status,
            sent,
            duration_ms,
            cache,
            upstream,
        )
