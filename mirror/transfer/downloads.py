"""One upstream download per digest, shared by every reader of the growing file.

The download runs as its own task, so it finishes into the cache even when every client
has gone. Readers follow the temp file as it grows (`mirror.transfer.growing`); they never
see the blob's last byte before its digest is verified, so a corrupt or cut-off download
never looks complete.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol, TypeVar

import anyio.to_thread

from mirror.cache.blobs import BlobStore
from mirror.cache.eviction import Reservation
from mirror.link import Link
from mirror.registry.errors import DownloadFailed, NoRoom, RegistryError, UpstreamFailed
from mirror.registry.reference import Digest
from mirror.stats import Stats
from mirror.transfer.growing import GrowingBlob
from mirror.transfer.partial import PartialFile
from mirror.transfer.pieces import Piece, Plan

log = logging.getLogger(__name__)

K = TypeVar("K")
V = TypeVar("V")


class BlobStream(Protocol):
    """A blob's bytes as they arrive from its source, from byte `offset` on; `size` is the whole blob's.

    `ranged` says the source honoured Range (it answered 206): only then can the rest be
    fetched as other ranges at once.
    """

    size: int | None
    offset: int
    ranged: bool

    def chunks(self) -> AsyncIterator[bytes]: ...


# Opens bytes [start, end) of the blob (end None: to its end), asking with Range; a source
# that ignores Range starts at 0 (its offset says so) and runs to the end.
OpenSource = Callable[[int, int | None], AbstractAsyncContextManager[BlobStream]]

# A connection cut mid-stream resumes from what it has, this many times, while each try adds bytes.
RESUMES = 3
RESUME_BACKOFF = 0.25
# A ranged read this far beyond the connection on its way there gets a connection of its own.
NEAR = 2 * 1024 * 1024


class Download:
    """One blob's download: a first connection that learns its size, then up to the link's
    count of ranges at once for a large blob, each written at its offset, each resumed on its own."""

    def __init__(self, digest: Digest, store: BlobStore, stats: Stats, link: Link, *, background: bool) -> None:
        self.digest = digest
        self.store = store
        self.stats = stats
        self.link = link
        self.background = background  # a prefetch: yields to clients' downloads until a client joins
        self.blob = GrowingBlob(digest, store)  # the file, how far it got, and its readers
        self.ok = False  # committed to the store
        self._plan = Plan([], 1)
        self._ranged = False  # the source honours Range
        self._workers: list[asyncio.Task[None]] = []
        self._queued: set[asyncio.Task[None]] = set()  # extra connections still waiting for a slot
        self._hashing: asyncio.Task[None] | None = None
        self._open_source: OpenSource | None = None
        self._reserved: Reservation | None = None  # the room make_room set aside, handed back at the commit or the end
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Mark the exception retrieved: if every client left, nobody else will look at it.
        self.ready.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.task: asyncio.Task[None] | None = None

    @property
    def size(self) -> int | None:
        """The blob's size, once the upstream said it (or the download ended)."""
        return self.blob.size

    def client_joined(self) -> None:
        """A client waits for this download now: it stops yielding to others."""
        if self.background:
            self.background = False
            self.link.client_download(+1)

    async def run(self, open_source: OpenSource) -> None:
        self._open_source = open_source
        if not self.background:
            self.link.client_download(+1)
        try:
            if self.store.partial_exists_now(self.digest):  # left by a restart
                self.blob.file = await anyio.to_thread.run_sync(PartialFile.resume, self.store, self.digest)
                if self.blob.file is not None:
                    self.blob.written, self.blob.received = self.blob.file.prefix, self.blob.file.held
            if self.blob.file is not None and self.blob.file.prefix and self.blob.file.matches():
                # Killed between the last byte and the rename: nothing left to fetch.
                self.blob.size = self.blob.written = self.blob.received = self.blob.file.prefix
                self.ready.set_result(None)
            else:
                if self.blob.file is not None:
                    log.info("resuming the download of %s with %d bytes held", self.digest, self.blob.file.held)
                await self._fetch()
            assert self.blob.file is not None
            await self._hashed()
            self.blob.file.verify(self.blob.size)
            self.blob.verified = True
            self.blob.notify()
            # Clients already have every byte; the fsync and rename below only make it durable.
            await self.blob.file.commit(self.blob.size, self._reserved)
            self.ok = True
            await self.store.evict_to_fit()
        except BaseException as exc:
            await self._failed(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            if not self.background:
                self.link.client_download(-1)
            if self._reserved is not None:
                self.store.release(self._reserved)
            await self._stop_workers()
            if self.blob.file is not None:
                if isinstance(self.blob.error, asyncio.CancelledError) and not self.ok:
                    # The server is stopping: the next start resumes from it, or, if it was
                    # verified but not yet renamed, commits it without a fetch.
                    self.blob.file.keep()
                else:
                    self.blob.file.discard()
            self.blob.notify()

    async def _failed(self, exc: BaseException) -> None:
        self.blob.error = exc
        if not self.ready.done():
            self.ready.set_exception(exc)
        if isinstance(exc, RegistryError) and exc.code == "DIGEST_INVALID":
            self.stats.digest_mismatches += 1
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            self.stats.disk_full += 1
            # Make room for the next try; this one's clients are cut off and will retry.
            await self.store.evict_bytes(self.blob.received + self.store.disk_margin)
        if isinstance(exc, asyncio.CancelledError):
            # Only a stopping server should cancel a download; say so when anything else did.
            log.info("download of %s cancelled after %d bytes", self.digest, self.blob.received)
        elif not isinstance(exc, NoRoom):
            log.warning("download of %s failed after %d bytes: %s", self.digest, self.blob.received, exc)

    async def _hashed(self) -> None:
        """Wait until the digest has covered every byte written."""
        assert self.blob.file is not None
        if self._hashing is not None:
            await self._hashing
        await self.blob.file.catch_up()

    # Fetching

    async def _fetch(self) -> None:
        """Fetch what is missing: the first connection, and the extra ones it starts; any failure fails all."""
        first = asyncio.create_task(self._first_connection(), name=f"download {self.digest} range 0")
        self._workers.append(first)
        # Extra connections still queued for a slot are not waited for: the others take every piece.
        while pending := [worker for worker in self._workers if not worker.done() and worker not in self._queued]:
            await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
            for worker in self._workers:
                if worker.done() and not worker.cancelled() and worker.exception() is not None:
                    raise worker.exception()  # type: ignore[misc]  # checked not None just above

    async def _stop_workers(self) -> None:
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)

    async def _first_connection(self) -> None:
        """Open from the first missing byte, learn the size, start the other ranges; then take pieces left."""
        async with self.link.slots.hold():
            await self._first_stream()
            while (piece := self._plan.take()) is not None:
                await self._fill(piece)

    async def _first_stream(self) -> None:
        """The first request: from the first missing byte, and only the link's first_range long when
        ranges may follow, so that no connection is ever dropped mid-answer (its bytes in flight
        would be fetched twice). Its answer says the size and whether the upstream honours Range."""
        position = self.blob.file.prefix if self.blob.file is not None else 0
        first_range = self.link.first_range()
        end = None if first_range is None else position + first_range
        held = self.blob.file.next_held(position) if self.blob.file is not None else None
        if end is not None and held is not None:
            end = min(end, held)  # a restart kept ranges further on: only the gap before them
        piece: Piece | None = None
        assert self._open_source is not None
        try:
            async with self._open_source(position, end) as source:
                piece = await self._begin(source, position, end)
                await self._copy(source, piece, follow=not source.ranged or end is None)
        except UpstreamFailed as exc:
            if piece is None or not self._resumable(exc, 0, progressed=piece.start > position):
                raise
            await self._before_resume(exc, piece)
        except RegistryError as exc:
            if exc.status != 416 or self.ready.done() or self.blob.file is None:
                raise
            # A partial file the upstream cannot continue (longer than the blob?): start afresh.
            log.warning("partial download of %s cannot be resumed (%s); starting again", self.digest, exc.message)
            self.blob.file.discard()
            self.blob.file = None
            await self._first_stream()
            return
        if not piece.done:
            await self._fill(piece)  # cut: the rest of it, on its own

    async def _begin(self, source: BlobStream, position: int, end: int | None) -> Piece:
        """The first answer: make room, plan the pieces, let readers in, start the extra connections."""
        self.blob.size = size = source.size
        self._reserved = await self.store.make_room(size)
        if self._reserved is None:
            raise NoRoom(f"no room in the cache for {self.digest}")
        if self.blob.file is None:
            self.blob.file = PartialFile.create(self.store, self.digest)
        file = self.blob.file
        self._ranged = source.ranged
        self.ready.set_result(None)
        if size is None or not source.ranged or end is None:
            # One stream, running on past what is held (it may start at byte 0: no Range honoured).
            gaps: list[tuple[int, int | None]] = [(file.prefix, None)] if size is None else []
            self._plan = Plan(gaps or list(file.missing(size or 0)), 1)
            return self._plan.take() or Piece(0, 0)  # nothing missing: the digest check decides
        count = self.link.ranges_for(size)
        self._plan = Plan(list(file.missing(size)), count, first=(position, min(end, size)))
        first = self._plan.pieces[0]
        extra = min(count - 1, sum(not piece.taken for piece in self._plan.pieces))
        if extra > 0:
            self.stats.parallel_downloads += 1
            log.info("fetching %s (%d bytes) as %d ranges at once", self.digest, size, extra + 1)
        for number in range(extra):
            name = f"download {self.digest} range {number + 1}"
            self._workers.append(asyncio.create_task(self._extra_connection(), name=name))
        return first

    async def _extra_connection(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._queued.add(task)
        try:
            async with self.link.slots.hold(extra=True):
                self._queued.discard(task)
                while self._ranged and (piece := self._plan.take()) is not None:
                    await self._fill(piece)
        finally:
            self._queued.discard(task)

    async def _fill(self, piece: Piece) -> None:
        """Fetch one piece with ranged requests, resuming after cuts."""
        resumes = 0
        assert self._open_source is not None
        while not piece.done:
            position = piece.start
            try:
                async with self._open_source(position, piece.end) as source:
                    if not source.ranged and self._ranged:
                        # It answered Range before: a CDN node that does not. One stream from here.
                        log.warning("upstream ignored Range for %s; fetching it as one stream", self.digest)
                        self._ranged = False
                    await self._copy(source, piece, follow=False)
            except UpstreamFailed as exc:
                if not self._resumable(exc, resumes, progressed=piece.start > position):
                    raise
                resumes += 1
                await self._before_resume(exc, piece)
                continue
            if not piece.done:  # an answer that ended without error, short: never re-opened for free
                raise DownloadFailed(f"upstream ended {self.digest} at byte {piece.start} without an error")

    def _resumable(self, error: UpstreamFailed, resumes: int, *, progressed: bool) -> bool:
        return self.ready.done() and progressed and resumes < RESUMES and not isinstance(error, DownloadFailed)

    async def _before_resume(self, error: UpstreamFailed, piece: Piece) -> None:
        self.stats.download_resumes += 1
        log.info("download of %s cut at byte %d (%s); resuming", self.digest, piece.start, error.message)
        await asyncio.sleep(RESUME_BACKOFF)

    async def _copy(self, source: BlobStream, piece: Piece, *, follow: bool) -> None:
        """Write the source's bytes of `piece` at their offsets; a following stream runs on into free pieces."""
        assert self.blob.file is not None
        if self.blob.size is not None and source.size is not None and source.size != self.blob.size:
            raise DownloadFailed(f"upstream now says {self.digest} has {source.size} bytes, not {self.blob.size}")
        if source.offset > piece.start:
            raise DownloadFailed(f"upstream resumed {self.digest} at byte {source.offset}, past {piece.start}")
        position = source.offset
        async for data in source.chunks():
            await self.link.spend(len(data), background=self.background)
            chunk = memoryview(data)
            while chunk:
                if piece.done:
                    next_piece = self._plan.follow(position, can_skip_far=not self._ranged) if follow else None
                    if next_piece is None:
                        return  # the rest is another connection's
                    piece = next_piece
                if position < piece.start:  # already held: skip it
                    skip = min(piece.start - position, len(chunk))
                    chunk, position = chunk[skip:], position + skip
                    continue
                take = len(chunk) if piece.end is None else min(len(chunk), piece.end - position)
                self.blob.file.write_at(position, chunk[:take])
                chunk, position, piece.start = chunk[take:], position + take, position + take
            self._progress()
        if piece.end is None:
            # No size announced: the stream's end is the blob's, and this piece is done (left
            # open, it would be fetched again and again: an upstream sending no length and
            # ignoring Range once made 715 whole-blob requests a second).
            self.blob.size = piece.end = position
        elif not piece.done:
            raise UpstreamFailed(f"upstream ended {self.digest} at byte {position}, before byte {piece.end}")

    def _progress(self) -> None:
        assert self.blob.file is not None
        self.blob.written, self.blob.received = self.blob.file.prefix, self.blob.file.held
        if self.blob.file.hashed < self.blob.written and not self.blob.file.catching_up and self._hashing is None:
            self._hashing = asyncio.create_task(self._catch_up())
        self.blob.notify()

    async def _catch_up(self) -> None:
        assert self.blob.file is not None
        try:
            await self.blob.file.catch_up()
        finally:
            self._hashing = None

    # Reading

    async def iter_range(self, start: int, end: int | None, *, shared_only: bool = False) -> AsyncIterator[bytes]:
        """Yield bytes [start, end) as they arrive; end None means to the end of the blob.

        A start far beyond where the download is gets its own ranged request, whose bytes
        cannot be checked against the digest: see `_far`; not with `shared_only` (another
        replica, which verifies what it gets, and must not cost the upstream the bytes twice).
        """
        if self.blob.passes(start, end):
            # A bounded range ends before the last byte, so it would be sent whole before the
            # digest is checked: not from this file, then, but as a cold range is (or, for
            # another replica, once verified).
            source = self.blob.iter_shared(start, end, verified=True) if shared_only else self._iter_direct(start, end)
        elif self._far(start) and not shared_only:
            source = self._iter_direct(start, end)
        else:
            source = self.blob.iter_shared(start, end)
        async for chunk in source:
            yield chunk

    def passes(self, start: int, end: int | None) -> bool:
        """Whether a read of [start, end) now would pass unverified bytes on: see `GrowingBlob.passes`."""
        return self.blob.passes(start, end)

    async def wait_size(self) -> int:
        """The blob's size, once known: see `GrowingBlob.wait_size`."""
        return await self.blob.wait_size()

    def _far(self, offset: int) -> bool:
        """Whether a read from `offset` would wait long for the download: not held, and no
        connection within NEAR bytes of it (a lazy pull reading a layer's footer first)."""
        if offset == 0 or self.blob.done or self.blob.file is None or self.blob.file.held_until(offset) > offset:
            return False
        if self.blob.size is not None and offset >= self.blob.size:
            return False
        reaching = self._plan.reaching(offset)
        return reaching is None or offset - reaching > NEAR

    async def _iter_direct(self, start: int, end: int | None) -> AsyncIterator[bytes]:
        """Bytes [start, end) from a ranged request of their own, served as they come and never stored."""
        assert self._open_source is not None
        async with self.link.slots.hold(), self._open_source(start, end) as source:
            if source.ranged:
                self.stats.cold_range_reads += 1
                async for chunk in source.chunks():
                    await self.link.spend(len(chunk), background=False)
                    yield chunk
                return
        # The upstream ignored Range: wait for the download, and its digest, instead.
        async for chunk in self.blob.iter_shared(start, end, verified=True):
            yield chunk
