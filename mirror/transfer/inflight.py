"""The downloads under way, one per digest: where a request finds the one to join."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from io import FileIO

from mirror.cache.blobs import BlobStore
from mirror.link import Link
from mirror.registry.reference import Digest
from mirror.stats import Stats
from mirror.transfer.downloads import Download, OpenSource


class InflightDownloads:
    """The downloads under way, by digest."""

    def __init__(self, store: BlobStore, stats: Stats) -> None:
        self.store = store
        self.stats = stats
        self._downloads: dict[Digest, Download] = {}
        # Told when a download ends, and whether the blob was committed (a fleet says it holds it).
        self.on_finished: Callable[[Digest, bool], Awaitable[None]] | None = None

    def __len__(self) -> int:
        return len(self._downloads)

    def get(self, digest: Digest) -> Download | None:
        return self._downloads.get(digest)

    async def find(self, digest: Digest) -> tuple[FileIO, int] | Download | None:
        """The cached file (open, and its size), or the download under way for it; None only when
        it is neither. The store's open() pauses, and a download may commit and leave meanwhile:
        then the file is there, and it is opened again. A None is returned without a pause after
        the last look, so the caller may start a download on it."""
        while True:
            opened = await self.store.open(digest)
            if opened is not None:
                return opened
            download = self._downloads.get(digest)
            if download is not None:
                return download
            if self.store.size_now(digest) is None:
                return None

    def start(self, digest: Digest, open_source: OpenSource, link: Link, *, background: bool = False) -> Download:
        download = Download(digest, self.store, self.stats, link, background=background)
        self._downloads[digest] = download

        async def run() -> None:
            try:
                await download.run(open_source)
            finally:
                del self._downloads[digest]
                if self.on_finished is not None and not (download.task and download.task.cancelled()):
                    await self.on_finished(digest, download.ok)

        download.task = asyncio.create_task(run(), name=f"download {digest}")
        return download

    def progress(self) -> list[dict[str, object]]:
        return [
            {"digest": str(d.digest), "size": d.size, "received": d.blob.received} for d in self._downloads.values()
        ]

    async def close(self) -> None:
        tasks = [d.task for d in self._downloads.values() if d.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
