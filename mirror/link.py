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
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

log = logging.getLogger(__name__)

# The request header value (RFC 9218's lowest urgency) by which `mirror prefetch` asks to go last.
BACKGROUND_PRIORITY = "u=7"
# A background download takes one chunk this often while clients' downloads run: a trickle
# that keeps its connection alive.
BACKGROUND_TRICKLE = 1.0
# The bandwidth cap lets a download run ahead of its share by this much time, no more.
BURST = 0.05
# Once the link is found to bring more bytes with more connections (an upstream or CDN pacing each
# connection, or one TCP connection unable to fill a long link), blobs this large come in ranges
# too, each range at least PACED_RANGE, whatever parallel_threshold says (bench scenario 11: an
# image of 3 x 16 MiB behind a paced upstream, 4.9 s in one stream each, 2.2 s so).
PACED_THRESHOLD = 4 * 1024 * 1024
PACED_RANGE = 2 * 1024 * 1024


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

    def __init__(self, limit: int, on_change: Callable[[], None] | None = None) -> None:
        self.limit = limit
        self.used = 0
        self._on_change = on_change  # a connection opened or closed
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
            self._changed()
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
        self._changed()
        for queue in (self._first, self._extra):
            while queue and self.used < self.limit:
                waiter = queue.popleft()
                if not waiter.done():
                    self.used += 1
                    waiter.set_result(None)
                    return

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()


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


class PaceMeter:
    """Whether more connections bring this link more bytes, measured on its own traffic.

    One window of WINDOW seconds at a time: the bytes received, and the connections open, when
    the same connections were open all through the window (none opened or closed). The best
    rate seen for each number of connections is kept; the link scales when some n connections
    carried at least SCALING × n/m times what m ≤ n/2 did. An unpaced link that one connection
    fills carries the same with 1 or 10, and never scales: its blobs keep parallel_threshold.
    """

    WINDOW = 1.0
    SCALING = 0.75

    def __init__(self, now: float | None = None) -> None:
        self._start = time.monotonic() if now is None else now
        self._bytes = 0
        self._connections: int | None = None  # the same all through the window, else -1
        self.rates: dict[int, float] = {}  # connections -> the best bytes/s seen with that many
        self.scales = False

    def saw(self, size: int, connections: int, now: float | None = None) -> bool:
        """`size` bytes came in while `connections` were open; True when the verdict just changed."""
        now = time.monotonic() if now is None else now
        if now - self._start >= self.WINDOW:
            changed = self._close(now)
            self._start, self._bytes, self._connections = now, 0, None
        else:
            changed = False
        self._bytes += size
        self._connections = connections if self._connections in (None, connections) else -1
        return changed

    def churn(self) -> None:
        """A connection opened or closed: this window is no sample (its rate is of no one number)."""
        self._connections = -1

    def _close(self, now: float) -> bool:
        n = self._connections
        if n is None or n <= 0 or now - self._start > 2 * self.WINDOW:
            return False  # connections came and went, or the link sat idle: no sample
        rate = self._bytes / (now - self._start)
        self.rates[n] = max(rate, self.rates.get(n, 0.0))
        scales = any(
            high >= 2 * low and self.rates[high] >= self.SCALING * self.rates[low] * high / low
            for low in self.rates
            for high in self.rates
        )
        changed, self.scales = scales != self.scales, scales
        return changed


class Link:
    """One upstream's connection and bandwidth caps, and the count of clients' downloads under way."""

    def __init__(self, policy: LinkPolicy | None = None, name: str = "") -> None:
        self.policy = policy or LinkPolicy()
        self.name = name
        self.pace = PaceMeter()
        self.slots = ConnectionSlots(self.policy.max_connections, self.pace.churn)
        bandwidth = self.policy.max_bandwidth
        self.bandwidth = Bandwidth(bandwidth) if bandwidth is not None else None
        self.client_downloads = 0  # downloads a client is waiting for (not prefetches)
        self._no_clients = asyncio.Event()
        self._no_clients.set()

    def ranges_for(self, size: int) -> int:
        """How many ranges to fetch a blob of this size in: 1 means one stream."""
        most = self.policy.max_connections_per_blob
        if size >= self.policy.parallel_threshold:
            return most
        if self.pace.scales and size >= PACED_THRESHOLD:
            return max(1, min(most, size // PACED_RANGE))
        return 1

    def first_range(self) -> int | None:
        """How many bytes a blob's first request asks for; None: all of it, as one stream.

        Half the threshold: a blob under it comes in one or two requests, and the first
        connection of a larger one does about its share, whatever the blob's size turns out to be.
        On a link that scales with connections, one small range: the rest may follow in ranges.
        """
        if self.policy.max_connections_per_blob == 1:
            return None
        if self.pace.scales:
            return min(max(self.policy.parallel_threshold // 2, 1), PACED_RANGE)
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
        if self.pace.saw(size, self.slots.used):
            rates = ", ".join(f"{n}: {rate / 1e6:.1f} MB/s" for n, rate in sorted(self.pace.rates.items()))
            log.info(
                "upstream %s %s with more connections (%s): blobs of %d MiB or more %s",
                self.name or "-",
                "brings more bytes" if self.pace.scales else "no longer brings more bytes",
                rates,
                PACED_THRESHOLD >> 20,
                "come in ranges too" if self.pace.scales else "keep parallel_threshold",
            )
        wait = self.bandwidth.delay(size) if self.bandwidth is not None else 0.0
        if wait > 0:
            await asyncio.sleep(wait)
        if background and self.client_downloads:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._no_clients.wait(), BACKGROUND_TRICKLE)
