"""Upstream sockets whose reading stops when a little is buffered, so memory stays bounded.

httpx's default backend (anyio) lets the event loop read a socket until it is empty before
it pauses it: with uvloop that is up to 32 reads of 256 KiB in one go, per connection. A
download in 8 parallel ranges from a fast upstream then held ~60 MiB of received bytes at
once. These streams use asyncio's StreamReader instead, whose protocol pauses the socket
from within the read callback once READ_LIMIT bytes wait, which stops the loop's reading
at once.

Timeouts use `asyncio.timeout`, not `wait_for`: Python 3.11's wait_for can swallow a
cancellation that arrives as the read completes, and a cancelled download then read on.
"""

from __future__ import annotations

import asyncio
import select
import socket
import ssl
from collections.abc import Iterable
from typing import Any

import httpcore

from mirror.upstream.destinations import RedirectRefused, category, destination

# Bytes a connection may hold received and not yet read; the reader pauses the socket at twice this.
READ_LIMIT = 128 * 1024

# httpcore's own spelling of a socket option (its backends' interface takes these).
SocketOption = tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]


class BoundedStream(httpcore.AsyncNetworkStream):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            async with asyncio.timeout(timeout):
                return await self._reader.read(max_bytes)
        except TimeoutError as exc:
            raise httpcore.ReadTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore.ReadError(str(exc)) from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        try:
            self._writer.write(buffer)
            async with asyncio.timeout(timeout):
                await self._writer.drain()
        except TimeoutError as exc:
            raise httpcore.WriteTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore.WriteError(str(exc)) from exc

    async def aclose(self) -> None:
        # As anyio does: close, let the loop run once, then drop what is left; waiting for
        # the peer (wait_closed) could hang a shutdown on a connection cut mid-answer.
        transport = self._writer.transport
        if not transport.is_closing():
            transport.close()
            await asyncio.sleep(0)
        transport.abort()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                await self._writer.start_tls(ssl_context, server_hostname=server_hostname)
        except TimeoutError as exc:
            await self.aclose()
            raise httpcore.ConnectTimeout(str(exc)) from exc
        except (OSError, ssl.SSLError) as exc:
            await self.aclose()
            raise httpcore.ConnectError(str(exc)) from exc
        return self

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object":
            return self._writer.get_extra_info("ssl_object")
        if info == "client_addr":
            return self._writer.get_extra_info("sockname")
        if info == "server_addr":
            return self._writer.get_extra_info("peername")
        if info == "socket":
            return self._writer.get_extra_info("socket")
        if info == "is_readable":  # an idle pooled connection that is readable was closed by the server
            sock = self._writer.get_extra_info("socket")
            return sock is not None and bool(select.select([sock], [], [], 0)[0])
        return None


class BoundedBackend(httpcore.AsyncNetworkBackend):
    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                sock = await _connect(host, port, local_address, socket_options)
            reader, writer = await asyncio.open_connection(sock=sock, limit=READ_LIMIT)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        return BoundedStream(reader, writer)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[SocketOption] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not used for upstreams")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


async def _connect(
    host: str, port: int, local_address: str | None, options: Iterable[SocketOption] | None
) -> socket.socket:
    """A connected non-blocking socket to the first address of `host` that answers."""
    loop = asyncio.get_running_loop()
    error: OSError = OSError(f"no address for {host}")
    found = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    rule = destination.get()
    if rule is not None:  # a redirect: only to the kinds of address it may reach (mirror.upstream.destinations)
        refusal = rule.refusal([str(address[0]) for *_, address in found])
        if refusal is not None:
            raise RedirectRefused(refusal)
        found = [entry for entry in found if category(str(entry[4][0])) in rule.allowed]
    for family, kind, protocol, _, address in found:
        sock = socket.socket(family, kind, protocol)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for option in options or ():
                sock.setsockopt(*option)
            if local_address is not None:
                sock.bind((local_address, 0))
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        except BaseException:  # cancelled (the connect timeout): no socket left behind
            sock.close()
            raise
        return sock
    raise error
