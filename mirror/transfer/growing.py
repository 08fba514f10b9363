"""A blob as its download writes it, and its readers following the file as it grows.

Readers never see the blob's last byte before its digest is verified, so a corrupt or
cut-off download never looks complete. The download (`mirror.transfer.downloads`) writes
the file and says how far it got; this is what its readers see of it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

from mirror.cache.blobs import BlobStore
from mirror.registry.errors import DownloadFailed
from mirror.registry.reference import Digest
from mirror.transfer.partial import PartialFile

# What a reader reads at once. Each holds two at most: one the socket is still sending (uvicorn
# waits for the transport to drain before its next write, not after) and the next one, read
# ahead; at 1 MiB, 8 clients on one cold blob held 16 MiB of them.
SHARED_CHUNK = 256 * 1024


class GrowingBlob:
    """One blob's file while its download writes it: how far it got, and whether its digest matched."""

    def __init__(self, digest: Digest, store: BlobStore) -> None:
        self.digest = digest
        self.store = store
        self.size: int | None = None
        self.written = 0  # the contiguous prefix on disk: what sequential readers can have
        self.received = 0  # every byte on disk, in whatever ranges
        self.verified = False  # the digest matched: readers may send the last byte
        self.error: BaseException | None = None
        self.file: PartialFile | None = None
        self._changed = asyncio.Event()

    @property
    def done(self) -> bool:
        return self.verified or self.error is not None

    def notify(self) -> None:
        """Wake every reader waiting for more: bytes written, verified, or failed."""
        self._changed.set()
        self._changed = asyncio.Event()

    def passes(self, start: int, end: int | None) -> bool:
        """Whether a read of [start, end) now would pass the upstream's unverified bytes on (X-Cache: PASS)."""
        return not self.verified and end is not None and (self.size is None or end < self.size)

    async def iter_shared(self, start: int, end: int | None, *, verified: bool = False) -> AsyncIterator[bytes]:
        """Bytes [start, end) from the download's file as they are written (`verified`: once verified)."""
        fd = self._open()
        try:
            position = start
            while True:
                limit = self._readable(position) if self.verified or not verified else position
                if end is not None:
                    limit = min(limit, end)
                if position < limit:
                    # Just written, so in the page cache: a read here does not block the loop.
                    chunk = os.pread(fd, min(SHARED_CHUNK, limit - position), position)
                    position += len(chunk)
                    yield chunk
                elif self.verified and position >= (self.written if end is None else end):
                    return
                elif self.error is not None:
                    raise DownloadFailed(f"upstream download of {self.digest} failed") from self.error
                else:
                    await self._changed.wait()
        finally:
            os.close(fd)

    def _readable(self, position: int) -> int:
        """How far a reader at `position` may read now: written bytes, but never the last one unverified."""
        if self.verified:
            return self.written
        held = self.file.held_until(position) if self.file is not None else position
        last = self.size - 1 if self.size is not None else self.written - 1
        return max(min(held, last), 0)

    def _open(self) -> int:
        if self.file is None or self.error is not None:
            raise DownloadFailed(f"upstream download of {self.digest} failed") from self.error
        try:
            return os.open(self.file.path, os.O_RDONLY)
        except FileNotFoundError as exc:
            if not self.verified:
                raise DownloadFailed(f"upstream download of {self.digest} failed") from exc
        # Verified, so committed meanwhile: the partial file is now the blob (a reader that joined
        # just before the rename; a soak run on CI cut a config blob here).
        try:
            return os.open(self.store.path(self.digest), os.O_RDONLY)
        except FileNotFoundError as exc:
            raise DownloadFailed(f"blob {self.digest} was evicted as it was committed") from exc

    async def wait_size(self) -> int:
        """The blob's size: announced by the upstream, or known once the download is complete."""
        while self.size is None and not self.done:
            await self._changed.wait()
        if self.size is None:
            if not self.verified:
                raise DownloadFailed(f"upstream download of {self.digest} failed") from self.error
            return self.written
        return self.size
