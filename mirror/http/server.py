"""uvicorn's httptools protocol with bounds on request heads, and warm answers without ASGI.

Without the bounds a client could send headers forever (memory) or one byte a minute (a
connection held open for good): uvicorn bounds neither with httptools. The warm answers
(see `mirror.http.fastpath`) skip the per-request task and ASGI cycle for the commonest request.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from mirror.http.responses import raw_error
from mirror.registry.errors import HeadersTooLarge, RegistryError, RequestTimeout

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 64 * 1024

_MAX_REMEMBERED = 1024  # request heads remembered, each at most _MAX_REMEMBERED_BYTES
_MAX_REMEMBERED_BYTES = 4096


class WarmAnswerer(Protocol):
    """The app's side of warm answers (`mirror.http.fastpath.WarmAnswers`)."""

    def question(self, method: bytes, url: bytes, headers: list[tuple[bytes, bytes]]) -> Any | None: ...

    def answer(self, question: Any, client: tuple[str, int] | None) -> tuple[bytes, bytes] | None: ...


def bounded_protocol(head_timeout: float, answerer: WarmAnswerer | None = None) -> type[BoundedHttpToolsProtocol]:
    """The protocol class for uvicorn: the time limit for a request head, and warm answers."""
    attributes: dict[str, object] = {"head_timeout": head_timeout, "answerer": answerer, "remembered": {}}
    return type("BoundedHttpToolsProtocol", (BoundedHttpToolsProtocol,), attributes)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """Bounds on request heads; warm answers written straight from the parsed head.

    Clients repeat the very same request bytes (same path, same headers), so a request that
    was parsed and found answerable is remembered, bytes -> question, and the next identical
    chunk is answered without parsing it again. That holds because identical bytes parse
    identically from the same parser state: a chunk is remembered only if it reached the
    parser at a message boundary and, parsed again on its own, is exactly that one request
    with no body; it is looked up only at a message boundary.
    """

    head_timeout = 30.0
    tls_probe_seen = False  # said once at INFO per process
    answerer: WarmAnswerer | None = None
    remembered: dict[bytes, Any] = {}  # noqa: RUF012  # one per server, made by bounded_protocol

    # uvicorn narrows asyncio.BaseTransport to Transport here too, hence the override ignore.
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CorkedTransport(transport, self.loop))  # type: ignore[arg-type]  # a stand-in
        self._head_bytes = 0
        self._head_tail = b""  # the last bytes of the head so far: its end may straddle two chunks
        self._in_head = True
        self._head_timer: asyncio.TimerHandle | None = self.loop.call_later(self.head_timeout, self._head_too_slow)
        self._answered = False  # the current request was answered by the answerer
        self._idle = True  # the parser is between messages, holding no byte of the next one
        self._chunk: bytes | None = None  # the chunk being parsed, if it arrived while idle
        self._last_answer = float("-inf")  # loop time of the last answer from memory
        self._fresh = True  # nothing received yet on this connection

    def data_received(self, data: bytes) -> None:
        if self._fresh:
            self._fresh = False
            if data[:2] == b"\x16\x03":  # a TLS ClientHello, on a plain-HTTP port
                self._tls_probe()
                return
        if self._idle:
            question = self.remembered.get(data)
            if question is not None and self._answer(question):
                return
        self._chunk = data if self._idle else None
        if self._in_head:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(self.head_timeout, self._head_too_slow)
            # Only the head counts: a client that does not wait for 100 Continue sends body bytes
            # in the same packets, after the blank line that ends the head.
            seen = self._head_tail + data
            end = seen.find(b"\r\n\r\n")
            self._head_bytes += len(data) if end < 0 else end + 4 - len(self._head_tail)
            self._head_tail = seen[-3:] if end < 0 else b""
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse(
                    HeadersTooLarge(f"request head over {MAX_HEAD_BYTES} bytes"), "Request Header Fields Too Large"
                )
                return
        super().data_received(data)

    def _tls_probe(self) -> None:
        """podman and skopeo try https first on a mirror given without a scheme: not a fault, so no
        WARNING (uvicorn's "Invalid HTTP request received"); said once at INFO, then at DEBUG."""
        level = logging.DEBUG if BoundedHttpToolsProtocol.tls_probe_seen else logging.INFO
        BoundedHttpToolsProtocol.tls_probe_seen = True
        log.log(
            level,
            "a TLS handshake on the plain-HTTP port from %s, closed: podman and skopeo try https first "
            "(set the mirror's registries.conf entry to insecure = true, or serve TLS with tls_cert)",
            self.client[0] if self.client else "-",
        )
        self._cancel_head_timer()
        self.transport.close()

    def on_message_begin(self) -> None:
        self._idle = False
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_head_timer()
        chunk, self._chunk = self._chunk, None
        if self.answerer is not None and self._answer_parsed(self.answerer, chunk):
            return
        # An answer earlier in this chunk armed the keep-alive timer; no timer runs during a request.
        self._unset_keepalive_if_required()
        super().on_headers_complete()

    def _answer_parsed(self, answerer: WarmAnswerer, chunk: bytes | None) -> bool:
        if self.parser.get_http_version() != "1.1" or not self.parser.should_keep_alive():
            return False
        question = answerer.question(self.parser.get_method(), self.url, self.headers)
        if question is None or not self._answer(question):
            return False
        self._answered = True
        if (
            chunk is not None
            and len(chunk) <= _MAX_REMEMBERED_BYTES
            and parse_alone(chunk) == (self.parser.get_method(), self.url, self.headers)
        ):
            if len(self.remembered) >= _MAX_REMEMBERED:
                self.remembered.clear()
            self.remembered[chunk] = question
        return True

    def _answer(self, question: Any) -> bool:
        """Write the whole response now if the answer is in memory; False passes the request on."""
        if self._serving() or self.flow.write_paused:
            return False  # responses must leave in order; the ASGI cycle handles the rest
        assert self.answerer is not None
        answer = self.answerer.answer(question, self.client)
        if answer is None:
            return False
        head, body = answer
        self._cancel_head_timer()  # armed for a new connection's first head, if this was it
        defaults = b"".join(name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers)
        self.transport.write(b"".join((STATUS_LINE[200], defaults, head, b"\r\n", body)))
        self.server_state.total_requests += 1
        # uvicorn cancels and re-creates the keep-alive timer for every response, a sixth of
        # the CPU time of an answer. Here the armed timer stays and, when it fires, sees when
        # the last answer left (timeout_keep_alive_handler).
        self._last_answer = self.loop.time()
        if self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )
        return True

    def _serving(self) -> bool:
        """Whether the app is serving a request on this connection, or has more queued."""
        return bool(self.pipeline) or (self.cycle is not None and not self.cycle.response_complete)

    def timeout_keep_alive_handler(self) -> None:
        if self._serving():
            self.timeout_keep_alive_task = None  # a request is being served: it re-arms the timer when done
            return
        idle = self.loop.time() - self._last_answer
        if idle < self.timeout_keep_alive:
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive - idle, self.timeout_keep_alive_handler
            )
            return
        super().timeout_keep_alive_handler()

    def on_body(self, body: bytes) -> None:
        if not self._answered:
            super().on_body(body)

    def on_message_complete(self) -> None:
        # Not idle if the message ended the connection (a trailer can say Connection: close):
        # the parser drops what follows, so nothing may be answered either.
        self._idle = self.parser.should_keep_alive()
        if self._answered:
            self._answered = False
        else:
            super().on_message_complete()
        self._in_head = True
        self._head_bytes = 0
        self._head_tail = b""

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            self._refuse(
                RequestTimeout(f"request head not received within {self.head_timeout:.0f} s"), "Request Timeout"
            )

    def _refuse(self, error: RegistryError, reason: str) -> None:
        self._cancel_head_timer()
        if self._serving():
            # Never write into a response under way: it ends the connection when it is done.
            self.cycle.keep_alive = False
            return
        headers, body = raw_error(error)
        lines = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
        head = f"HTTP/1.1 {error.status} {reason}\r\n".encode() + lines + b"connection: close\r\n\r\n"
        self.transport.write(head + body)
        self.transport.close()


class _Alone:
    """httptools callbacks that record one chunk parsed on its own (see parse_alone)."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.begun = self.completed = 0
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.method = b""
        self.keep_alive = self.body = False

    def on_message_begin(self) -> None:
        self.begun += 1

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.method = self.parser.get_method()
        self.keep_alive = self.parser.get_http_version() == "1.1" and self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.body = True

    def on_message_complete(self) -> None:
        self.completed += 1


def parse_alone(chunk: bytes) -> tuple[bytes, bytes, list[tuple[bytes, bytes]]] | None:
    """(method, URL, headers) if a fresh parser finds exactly one whole keep-alive HTTP/1.1
    request without a body in `chunk` and nothing after it (but line ends); else None."""
    alone = _Alone()
    try:
        alone.parser.feed_data(chunk)
    except httptools.HttpParserError:  # HttpParserUpgrade is one too
        return None
    if alone.begun != 1 or alone.completed != 1 or alone.body or not alone.keep_alive:
        return None
    return alone.method, alone.url, alone.headers


class CorkedTransport:
    """Holds a small response head until the first body write, so both leave in one send().

    uvicorn writes a response's head and body separately: two system calls for every small
    response, which were a third of the CPU time of a warm tag resolution. Anything that
    is not a lone head passes straight through; a head with no body (HEAD) is sent on the
    next turn of the event loop, or when the connection closes.
    """

    _MAX_HEAD = 16 * 1024
    _MAX_JOIN = 64 * 1024

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            if len(data) <= self._MAX_JOIN:
                self._transport.write(pending + bytes(data))
                return
            self._transport.write(pending)
        elif (
            isinstance(data, bytes)
            and len(data) <= self._MAX_HEAD
            and data.startswith(b"HTTP/1.1 ")
            and data.endswith(b"\r\n\r\n")
        ):
            self._pending = data
            self._loop.call_soon(self._flush)
            return
        self._transport.write(data)

    def _flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None and not self._transport.is_closing():
            self._transport.write(pending)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> object:
        return getattr(self._transport, name)
