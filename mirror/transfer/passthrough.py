"""A blob the cache has no room for, streamed from its source to one client."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

from mirror.link import Link
from mirror.registry.errors import DownloadFailed
from mirror.registry.reference import Digest
from mirror.stats import Stats
from mirror.transfer.downloads import BlobStream, OpenSource


class PassThrough:
    """A blob streamed from the upstream straight to one client, verified but never stored.

    Used when the cache has no room for it. The last chunk is held back until the digest
    matched, as for cached downloads.
    """

    def __init__(self, digest: Digest, open_source: OpenSource, link: Link, stats: Stats) -> None:
        self.digest = digest
        self._open_source = open_source
        self._link = link
        self._stack = AsyncExitStack()
        self._source: BlobStream | None = None
        self.stats = stats
        self.size: int | None = None

    async def open(self) -> None:
        await self._stack.enter_async_context(self._link.slots.hold())
        self._source = await self._stack.enter_async_context(self._open_source(0, None))
        self.size = self._source.size

    async def chunks(self) -> AsyncIterator[bytes]:
        assert self._source is not None
        hasher = hashlib.new(self.digest.algorithm)
        held = b""
        received = 0
        async for chunk in self._source.chunks():
            await self._link.spend(len(chunk), background=False)
            hasher.update(chunk)
            received += len(chunk)
            if held:
                yield held
            held = chunk
        if hasher.hexdigest() != self.digest.hex or (self.size is not None and received != self.size):
            self.stats.digest_mismatches += 1
            raise DownloadFailed(f"upstream content for {self.digest} does not match its digest")
        if held:
            yield held

    async def aclose(self) -> None:
        await self._stack.aclose()
