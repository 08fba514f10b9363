"""uvicorn's httptools protocol with bounds on request heads, in size and in time.

Without them a client could send headers forever (memory) or one byte a minute (a
connection held open for good): uvicorn bounds neither with httptools.
"""

from __future__ import annotations

import asyncio
import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD_BYTES = 64 * 1024


def bounded_protocol(head_timeout: float) -> type[BoundedHttpToolsProtocol]:
    """The protocol class for uvicorn, with the configured time limit for a request head."""
    return type("BoundedHttpToolsProtocol", (BoundedHttpToolsProtocol,), {"head_timeout": head_timeout})


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    head_timeout = 30.0

    # uvicorn narrows asyncio.BaseTransport to Transport here too, hence the override ignore.
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CorkedTransport(transport, self.loop))  # type: ignore[arg-type]  # a stand-in
        self._head_bytes = 0
        self._in_head = True
        self._head_timer: asyncio.TimerHandle | None = self.loop.call_later(self.head_timeout, self._head_too_slow)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(self.head_timeout, self._head_too_slow)
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse(431, "Request Header Fields Too Large", f"request head over {MAX_HEAD_BYTES} bytes")
                return
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True
        self._head_bytes = 0

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
            self._refuse(408, "Request Timeout", f"request head not received within {self.head_timeout:.0f} s")

    def _refuse(self, status: int, reason: str, message: str) -> None:
        self._cancel_head_timer()
        body = json.dumps({"errors": [{"code": "UNSUPPORTED", "message": message}]}).encode()
        head = (
            f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        self.transport.write(head.encode() + body)
        self.transport.close()


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
