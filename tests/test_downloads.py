"""The download engine in process, for races a real server only hits by chance."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.lowlevel
from support import sha256

from mirror.cache.blobs import BlobStore
from mirror.cache.format import prepare
from mirror.cache.layout import CacheLayout
from mirror.link import Link, LinkPolicy
from mirror.registry.reference import parse_digest
from mirror.stats import Stats
from mirror.transfer.growing import SHARED_CHUNK
from mirror.transfer.inflight import InflightDownloads


class MemoryStream:
    """A blob's bytes [start, end) from memory, as an upstream that honours Range sends them."""

    def __init__(self, data: bytes, start: int, end: int | None) -> None:
        self.size = len(data)
        self.offset = start
        self.ranged = start > 0 or end is not None
        self._data = data[start:end]

    async def chunks(self) -> AsyncIterator[bytes]:
        yield self._data


def test_a_reader_that_joined_before_the_commit_reads_the_committed_blob(tmp_path: Path) -> None:
    """A client joins a download, and opens it just after the rename into place, before the
    download has taken note of it (the directory's fsync runs in between).

    A soak run on CI cut such a client off ("unexpected EOF" on a config blob): the reader
    opened the partial file, which the commit had just renamed.
    """

    async def scenario(attempt: int) -> bool:
        data = b"config %d " % attempt * 1000
        digest = parse_digest(sha256(data))

        @asynccontextmanager
        async def open_source(start: int, end: int | None) -> AsyncIterator[MemoryStream]:
            yield MemoryStream(data, start, end)

        layout = CacheLayout(tmp_path / f"cache-{attempt}")
        prepare(layout)
        store = BlobStore(layout)
        store.open_sync()
        download = InflightDownloads(store, Stats()).start(digest, open_source, Link(LinkPolicy()))
        with anyio.fail_after(10):
            # Polled at every turn of the loop: the window is one thread's fsync long, and no event marks it.
            while not download.ok and (not download.blob.verified or store.partial_exists_now(digest)):
                await anyio.lowlevel.checkpoint()
        caught = not download.ok  # renamed, and the download not yet told
        assert b"".join([chunk async for chunk in download.iter_range(0, None)]) == data
        assert b"".join([chunk async for chunk in download.iter_range(7, 14)]) == data[7:14]
        return caught

    caught = [anyio.run(scenario, attempt) for attempt in range(20)]
    assert any(caught), "never read between the rename and the download's note of it"


def test_a_reader_of_a_download_holds_a_bounded_chunk(tmp_path: Path) -> None:
    """Readers following a download read SHARED_CHUNK at most at once: each holds two (one being
    sent, one read ahead), so 8 clients on a cold blob hold 4 MiB, not 16, whatever its size."""

    async def scenario() -> None:
        data = bytes(range(256)) * 12_000  # ~3 MiB
        digest = parse_digest(sha256(data))

        @asynccontextmanager
        async def open_source(start: int, end: int | None) -> AsyncIterator[MemoryStream]:
            yield MemoryStream(data, start, end)

        layout = CacheLayout(tmp_path / "cache")
        prepare(layout)
        store = BlobStore(layout)
        store.open_sync()
        download = InflightDownloads(store, Stats()).start(digest, open_source, Link(LinkPolicy()))
        with anyio.fail_after(10):
            await download.ready  # its first answer came: the file exists
            chunks = [chunk async for chunk in download.iter_range(0, None)]
        assert b"".join(chunks) == data
        assert max(len(chunk) for chunk in chunks) <= SHARED_CHUNK

    anyio.run(scenario)
