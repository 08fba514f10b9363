"""The link to one upstream: its connection cap, its bandwidth cap, and who goes first.

Every blob download from an upstream takes its connections here and spends its bandwidth
here, whichever part of the mirror asked for the bytes: a client's pull, another range of
the same blob, a cold ranged read, or a prefetch. Clients come first: a blob's first
connection goes ahead of extra ranges, and background work slows down while any client's
download runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

# The request header value (RFC 9218's lowest urgency) by which `mirror prefetch` asks to go last.
BACKGROUND_PRIORITY = "u=7"
# A background download takes one chunk this often while clients' downloads run: a trickle
# that keeps its connection alive.
BACKGROUND_TRICKLE = 1.0
# The bandwidth cap lets a download run ahead of its share by this much time, no more.
BURST = 0.05


def is_background(priority: str | None) -> bool:
    """Whether a request's Priority header (RFC 9218) asks for the lowest urgency, u=7."""
    if not priority:
        return False
    for item in priority.split(","):
        key, _, value = item.strip().partition("=")
        if key == "u":
            return value.strip() == "7"
    return False


class ConnectionSlots:
    """At most `limit` connections at once; a blob's first connection is served before extra ranges."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._first: deque[asyncio.Future[None]] = deque()
        self._extra: deque[asyncio.Future[None]] = deque()

    @asynccontextmanager
    async def hold(self, *, extra: bool = False) -> AsyncIterator[None]:
        await self._acquire(extra)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, extra: bool) -> None:
        if self.used < self.limit and not self._first and not (extra and self._extra):
            self.used += 1
            return
        queue = self._extra if extra else self._first
        waiter = asyncio.get_running_loop().create_future()
        queue.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # handed a slot just as it was cancelled: pass it on
            else:
                queue.remove(waiter)
            raise

    def _release(self) -> None:
        self.used -= 1
        for queue in (self._first, self._extra):
            while queue and self.used < self.limit:
                waiter = queue.popleft()
                if not waiter.done():
                    self.used += 1
                    waiter.set_result(None)
                    return


class Bandwidth:
    """A shared cap in bytes per second: each chunk takes its turn, so downloads share it fairly."""

    def __init__(self, bits_per_second: int) -> None:
        self.rate = bits_per_second / 8
        self._due = 0.0  # when the link has carried everything taken so far, at the cap

    def delay(self, size: int) -> float:
        """Take `size` bytes; how long to wait before reading on so as to stay under the cap."""
        now = time.monotonic()
        self._due = max(self._due, now - BURST) + size / self.rate
        return max(0.0, self._due - now - BURST)


@dataclass
class LinkPolicy:
    max_connections: int = 32
    max_connections_per_blob: int = 8
    parallel_threshold: int = 64 * 1024 * 1024
    max_bandwidth: int | None = None  # bits per second


class Link:
    """One upstream's connection and bandwidth caps, and the count of clients' downloads under way."""

    def __init__(self, policy: LinkPolicy | None = None) -> None:
        self.policy = policy or LinkPolicy()
        self.slots = ConnectionSlots(self.policy.max_connections)
        bandwidth = self.policy.max_bandwidth
        self.bandwidth = Bandwidth(bandwidth) if bandwidth is not None else None
        self.client_downloads = 0  # downloads a client is waiting for (not prefetches)
        self._no_clients = asyncio.Event()
        self._no_clients.set()

    def ranges_for(self, size: int) -> int:
        """How many ranges to fetch a blob of this size in: 1 means one stream."""
        if size < self.policy.parallel_threshold:
            return 1
        return self.policy.max_connections_per_blob

    def first_range(self) -> int | None:
        """How many bytes a blob's first request asks for; None: all of it, as one stream.

        Half the threshold: a blob under it comes in one or two requests, and the first
        connection of a larger one does about its share, whatever the blob's size turns out to be.
        """
        if self.policy.max_connections_per_blob == 1:
            return None
        return max(self.policy.parallel_threshold // 2, 1)

    def client_download(self, change: int) -> None:
        """A client's download starts (+1) or ends (-1)."""
        self.client_downloads += change
        if self.client_downloads:
            self._no_clients.clear()
        else:
            self._no_clients.set()

    async def spend(self, size: int, *, background: bool) -> None:
        """Account for `size` bytes just received; pause if the cap or a client's download says so."""
        wait = self.bandwidth.delay(size) if self.bandwidth is not None else 0.0
        if wait > 0:
            await asyncio.sleep(wait)
        if background and self.client_downloads:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._no_clients.wait(), BACKGROUND_TRICKLE)
