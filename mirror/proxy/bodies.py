"""What a blob request gets from the proxy: one interface, whatever the bytes' source.

A cached file, a download in flight (started by this request or joined), or a pass-through
for a blob the cache has no room for: each gives its size, its cache status, its bytes from
any offset, and a way to let go. Routes and the warmer use this interface, never the types
behind it.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from io import FileIO

from mirror.cache.files import iter_file
from mirror.proxy.answers import CacheStatus
from mirror.stats import Stats
from mirror.transfer.downloads import Download
from mirror.transfer.passthrough import PassThrough


class BlobBody(ABC):
    cache_status: CacheStatus  # HIT, MISS, COALESCED or BYPASS (and PASS: a range sent on as the upstream sent it)
    ranged = True  # False: only the whole blob can be sent (a Range is ignored)

    @abstractmethod
    async def size(self, wait: bool = False) -> int | None:
        """The blob's size; None while unknown, unless `wait`, which waits for it."""

    @abstractmethod
    def iter_range(self, start: int, end: int | None) -> AsyncIterator[bytes | memoryview]:
        """Bytes [start, end); end None means to the end. The last byte comes only once verified."""

    def cache_status_for(self, start: int, end: int | None) -> CacheStatus:
        """X-Cache for bytes [start, end): PASS when they come straight from the upstream, unverified."""
        return self.cache_status

    @abstractmethod
    async def aclose(self) -> None:
        """Let go of what the body holds (a file, a connection); the download others share goes on."""

    @abstractmethod
    async def settle(self) -> bool:
        """Wait until the blob is cached (or cannot be), and let go; True if this request fetched it."""


class CachedBody(BlobBody):
    cache_status = CacheStatus.HIT

    def __init__(self, file: FileIO, size: int, stats: Stats) -> None:
        self._file = file
        self._size = size
        self._stats = stats

    async def size(self, wait: bool = False) -> int | None:
        return self._size

    async def iter_range(self, start: int, end: int | None) -> AsyncIterator[bytes | memoryview]:
        async for chunk in iter_file(self._file, start, self._size if end is None else end):
            self._stats.bytes_served_from_cache += len(chunk)
            yield chunk

    async def aclose(self) -> None:
        self._file.close()

    async def settle(self) -> bool:
        await self.aclose()
        return False


class DownloadBody(BlobBody):
    def __init__(
        self, download: Download, cache_status: CacheStatus, stats: Stats, *, shared_only: bool = False
    ) -> None:
        self._download = download
        self.cache_status = cache_status  # MISS: this request started it; COALESCED: joined
        self._stats = stats
        self._shared_only = shared_only  # for another replica: never a ranged request of its own

    async def size(self, wait: bool = False) -> int | None:
        return await self._download.wait_size() if wait else self._download.size

    def cache_status_for(self, start: int, end: int | None) -> CacheStatus:
        passes = self._download.passes(start, end) and not self._shared_only
        return CacheStatus.PASS if passes else self.cache_status

    async def iter_range(self, start: int, end: int | None) -> AsyncIterator[bytes | memoryview]:
        joined = self.cache_status is CacheStatus.COALESCED  # bytes another client's download already fetched
        async for chunk in self._download.iter_range(start, end, shared_only=self._shared_only):
            if joined:
                self._stats.bytes_served_from_cache += len(chunk)
            yield chunk

    async def aclose(self) -> None:
        pass  # the download runs on for the others, and into the cache

    async def settle(self) -> bool:
        if self._download.task is not None:
            await asyncio.shield(self._download.task)
        return self.cache_status is CacheStatus.MISS


class PassThroughBody(BlobBody):
    """No room to cache it: the whole blob, straight from the upstream, verified on the way."""

    cache_status = CacheStatus.BYPASS
    ranged = False

    def __init__(self, passthrough: PassThrough) -> None:
        self._passthrough = passthrough

    async def size(self, wait: bool = False) -> int | None:
        return self._passthrough.size

    async def iter_range(self, start: int, end: int | None) -> AsyncIterator[bytes | memoryview]:
        async for chunk in self._passthrough.chunks():
            yield chunk

    async def aclose(self) -> None:
        await self._passthrough.aclose()

    async def settle(self) -> bool:
        await self.aclose()  # nothing to warm: the cache has no room for it
        return False
