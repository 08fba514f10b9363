"""One upstream download per digest, shared by every reader of the growing file.

The download runs as its own task, so it finishes into the cache even when every client
has gone. Readers follow the temp file as it grows; they never see the blob's last byte
before its digest is verified, so a corrupt or cut-off download never looks complete.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import Any, Generic, Protocol, TypeVar

from mirror.cache.blobs import READ_CHUNK, BlobStore, BlobWriter
from mirror.registry.errors import DownloadFailed, NoRoom, RegistryError, UpstreamFailed
from mirror.registry.reference import Digest
from mirror.stats import Stats

log = logging.getLogger(__name__)

K = TypeVar("K")
V = TypeVar("V")


class BlobStream(Protocol):
    """A blob's bytes as they arrive from its source, from byte `offset` on; `size` is the whole blob's."""

    size: int | None
    offset: int

    def chunks(self) -> AsyncIterator[bytes]: ...


# Opens the blob from a byte offset on; a source that cannot start there starts at 0 (offset says).
OpenSource = Callable[[int], AbstractAsyncContextManager[BlobStream]]

# A download cut mid-stream resumes from what it has, this many times, while each try adds bytes.
RESUMES = 3
RESUME_BACKOFF = 0.25


class PassThrough:
    """A blob streamed from the upstream straight to one client, verified but never stored.

    Used when the cache has no room for it. The last chunk is held back until the digest
    matched, as for cached downloads.
    """

    def __init__(self, digest: Digest, open_source: OpenSource, stats: Stats) -> None:
        self.digest = digest
        self._open_source = open_source
        self._stack = AsyncExitStack()
        self._source: BlobStream | None = None
        self.stats = stats
        self.size: int | None = None

    async def open(self) -> None:
        self._source = await self._stack.enter_async_context(self._open_source(0))
        self.size = self._source.size

    async def chunks(self) -> AsyncIterator[bytes]:
        assert self._source is not None
        hasher = hashlib.new(self.digest.algorithm)
        held = b""
        received = 0
        async for chunk in self._source.chunks():
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


class Download:
    def __init__(self, digest: Digest, store: BlobStore, stats: Stats) -> None:
        self.digest = digest
        self.store = store
        self.stats = stats
        self.size: int | None = None
        self.written = 0
        self.verified = False  # the digest matched: readers may send the last byte
        self.ok = False  # committed to the store
        self.error: BaseException | None = None
        self.writer: BlobWriter | None = None
        self._reserved = 0  # bytes make_room set aside for this download, released when it ends
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Mark the exception retrieved: if every client left, nobody else will look at it.
        self.ready.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    @property
    def done(self) -> bool:
        return self.verified or self.error is not None

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def run(self, open_source: OpenSource) -> None:
        try:
            self.writer = await self.store.resume_writer(self.digest)  # left by a restart
            if self.writer is not None and self.writer.complete():
                # Killed between the last byte and the rename: nothing left to fetch.
                self.size = self.written = self.writer.size
                self.ready.set_result(None)
            else:
                if self.writer is not None:
                    self.written = self.writer.size
                    log.info("resuming the download of %s from byte %d, left by a restart", self.digest, self.written)
                await self._fetch(open_source)
            assert self.writer is not None
            self.writer.verify(self.size)
            self.verified = True
            self._notify()
            # Clients already have every byte; the fsync and rename below only make it durable.
            await self.writer.commit(self.size)
            self.ok = True
            self.store.release(self._reserved)
            self._reserved = 0
            await self.store.evict_to_fit()
        except BaseException as exc:
            self.error = exc
            if not self.ready.done():
                self.ready.set_exception(exc)
            if isinstance(exc, RegistryError) and exc.code == "DIGEST_INVALID":
                self.stats.digest_mismatches += 1
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                self.stats.disk_full += 1
                # Make room for the next try; this one's clients are cut off and will retry.
                await self.store.evict_bytes(self.written + self.store.disk_margin)
            if not isinstance(exc, asyncio.CancelledError | NoRoom):
                log.warning("download of %s failed after %d bytes: %s", self.digest, self.written, exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self.store.release(self._reserved)
            self._reserved = 0
            if self.writer is not None:
                if isinstance(self.error, asyncio.CancelledError) and not self.verified:
                    self.writer.keep()  # the server is stopping: the next start resumes from it
                else:
                    self.writer.discard()
            self._notify()

    async def _fetch(self, open_source: OpenSource) -> None:
        """Fetch what is missing into the writer, resuming after cuts."""
        resumes = 0
        while True:
            before = self.written
            try:
                async with open_source(self.written) as source:
                    if not self.ready.done():
                        self.size = source.size
                        if not await self.store.make_room(source.size):
                            raise NoRoom(f"no room in the cache for {self.digest}")
                        self._reserved = source.size or 0
                        if self.writer is None:
                            self.writer = BlobWriter(self.store, self.digest, partial=True)
                        self.ready.set_result(None)
                    await self._copy(source)
                return
            except UpstreamFailed as exc:
                # Cut or stalled mid-stream: go on from what is on disk, asking the registry again.
                if not self._resumable(exc, resumes, progressed=self.written > before):
                    raise
                resumes += 1
                self.stats.download_resumes += 1
                log.info("download of %s cut at %d bytes (%s); resuming", self.digest, self.written, exc.message)
                await asyncio.sleep(RESUME_BACKOFF * resumes)
            except RegistryError as exc:
                if exc.status != 416 or self.ready.done() or self.writer is None:
                    raise
                # A partial file the upstream cannot continue (longer than the blob?): start afresh.
                log.warning("partial download of %s cannot be resumed (%s); starting again", self.digest, exc.message)
                self.writer.discard()
                self.writer, self.written = None, 0

    def _resumable(self, error: UpstreamFailed, resumes: int, *, progressed: bool) -> bool:
        started = self.ready.done() and self.written > 0
        return started and progressed and resumes < RESUMES and not isinstance(error, DownloadFailed)

    async def _copy(self, source: BlobStream) -> None:
        """Append the source's bytes past what is written; a source that restarted at 0 is skipped ahead."""
        assert self.writer is not None
        if self.size is not None and source.size is not None and source.size != self.size:
            raise DownloadFailed(f"upstream now says {self.digest} has {source.size} bytes, not {self.size}")
        skip = self.written - source.offset
        if skip < 0:
            raise DownloadFailed(f"upstream resumed {self.digest} at byte {source.offset}, past {self.written}")
        async for chunk in source.chunks():
            if skip:
                dropped = min(skip, len(chunk))
                chunk, skip = chunk[dropped:], skip - dropped
                if not chunk:
                    continue
            self.writer.write(chunk)
            self.written += len(chunk)
            self._notify()

    async def iter_range(self, start: int, end: int | None) -> AsyncIterator[bytes]:
        """Yield bytes [start, end) as they arrive; end None means to the end of the blob."""
        fd = self._open()
        try:
            position = start
            while True:
                limit = self.written if self.verified else max(self.written - 1, 0)
                if end is not None:
                    limit = min(limit, end)
                if position < limit:
                    # Just written, so in the page cache: a read here does not block the loop.
                    chunk = os.pread(fd, min(READ_CHUNK, limit - position), position)
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

    def _open(self) -> int:
        if self.writer is None or self.error is not None:
            raise DownloadFailed(f"upstream download of {self.digest} failed") from self.error
        try:
            return os.open(self.writer.path, os.O_RDONLY)
        except FileNotFoundError as exc:
            raise DownloadFailed(f"upstream download of {self.digest} failed") from exc

    async def wait_size(self) -> int:
        """The blob's size: announced by the upstream, or known once the download is complete."""
        while self.size is None and not self.done:
            await self._changed.wait()
        if self.size is None:
            if not self.verified:
                raise DownloadFailed(f"upstream download of {self.digest} failed") from self.error
            return self.written
        return self.size


class InflightDownloads:
    """The downloads under way, by digest."""

    def __init__(self, store: BlobStore, stats: Stats) -> None:
        self.store = store
        self.stats = stats
        self._downloads: dict[Digest, Download] = {}

    def __len__(self) -> int:
        return len(self._downloads)

    def get(self, digest: Digest) -> Download | None:
        return self._downloads.get(digest)

    def start(self, digest: Digest, open_source: OpenSource) -> Download:
        download = Download(digest, self.store, self.stats)
        self._downloads[digest] = download

        async def run() -> None:
            try:
                await download.run(open_source)
            finally:
                del self._downloads[digest]

        download.task = asyncio.create_task(run(), name=f"download {digest}")
        return download

    def progress(self) -> list[dict[str, object]]:
        return [{"digest": str(d.digest), "size": d.size, "received": d.written} for d in self._downloads.values()]

    async def close(self) -> None:
        tasks = [d.task for d in self._downloads.values() if d.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class SingleFlight(Generic[K, V]):
    """Runs one task per key; everyone asking for the same key meanwhile awaits its result."""

    def __init__(self) -> None:
        self._tasks: dict[K, asyncio.Task[V]] = {}

    async def run(self, key: K, work: Callable[[], Coroutine[Any, Any, V]]) -> V:
        task = self._tasks.get(key)
        if task is None:
            task = asyncio.create_task(work())
            self._tasks[key] = task
            task.add_done_callback(lambda _: self._tasks.pop(key, None))
        # Shielded: a client that disconnects must not cancel the work others are waiting for.
        return await asyncio.shield(task)
