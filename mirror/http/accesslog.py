"""One access-log line per request, with the cache status, bytes, duration, upstream and request id;
and the latency histograms of `/metrics`."""

from __future__ import annotations

import json
import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mirror import requestid
from mirror.http.target import Target, target_of
from mirror.registry.route import API_ROOTS
from mirror.stats import Latencies

log = logging.getLogger("mirror.access")


def route_of(scope: Scope) -> str:
    """The route a request took, as the histograms label it: manifest, blob, tags, referrers, base, other."""
    target = target_of(scope)
    if isinstance(target, Target):
        return target.api.route
    return "base" if scope.get("path") in API_ROOTS else "other"


class AccessLog:
    """ASGI middleware; the cache status comes from the response's `X-Cache` header.

    It also gives each request its id (the client's `X-Request-Id`, or a new one): returned
    to the client, written in the line, and sent upstream with the requests made for it.
    """

    def __init__(self, app: ASGIApp, *, json_format: bool, latencies: Latencies | None = None) -> None:
        self.app = app
        self.json_format = json_format
        self.latencies = latencies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0
        sent = 0
        cache = "-"
        first_byte: float | None = None
        given = next((value for name, value in scope["headers"] if name == b"x-request-id"), None)
        request_id = requestid.accept(given.decode("latin-1") if given is not None else None)
        token = requestid.current.set(request_id)

        async def logging_send(message: Message) -> None:
            nonlocal status, sent, cache, first_byte
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                sniff = True
                for name, value in headers:
                    if name == b"x-cache":
                        cache = value.decode("latin-1")
                    elif name == b"x-content-type-options":
                        sniff = False
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                if sniff:  # every answer, errors included: none is to be read as a page
                    headers.append((b"x-content-type-options", b"nosniff"))
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body":
                body = message.get("body", b"")
                sent += len(body)
                if first_byte is None and (body or not message.get("more_body", False)):
                    first_byte = time.perf_counter() - started
            await send(message)

        try:
            await self.app(scope, receive, logging_send)
        finally:
            requestid.current.reset(token)
            total = time.perf_counter() - started
            if self.latencies is not None and status:
                self.latencies.observe(route_of(scope), cache, first_byte or total, total)
            if log.isEnabledFor(logging.INFO):
                self._write(scope, status, sent, cache, total * 1000, request_id)

    def _write(self, scope: Scope, status: int, sent: int, cache: str, duration_ms: float, request_id: str) -> None:
        client = scope.get("client") or ("-", 0)
        path = scope.get("path", "")
        if scope.get("query_string"):
            path += "?" + scope["query_string"].decode("latin-1")
        state = scope.get("state", {})
        write_line(
            self.json_format,
            client[0],
            scope["method"],
            path,
            status,
            sent,
            duration_ms,
            cache,
            state.get("upstream", "-"),
            request_id,
            state.get("refused"),
        )


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
    request_id: str = "-",
    refused: str | None = None,
) -> None:
    """One request's line, as JSON or as text; a refusal's reason at its end."""
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
            "request_id": request_id,
        }
        if refused is not None:
            record["refused"] = refused
        log.info(json.dumps(record))
    else:
        # repr-style quoting keeps a crafted path from forging extra log lines.
        log.info(
            '%s "%s %s" %d %d %.1fms %s %s %s%s',
            client,
            method,
            json.dumps(path)[1:-1],
            status,
            sent,
            duration_ms,
            cache,
            upstream,
            request_id,
            "" if refused is None else f' refused="{json.dumps(refused)[1:-1]}"',
        )
