"""Content-addressed blob files: atomic, verified commits and ranged readers.

A file at a blob path is always complete and verified: bytes are written to a unique temp
file in `<cache>/tmp` (same filesystem), hashed while written, compared, fsynced and only
then renamed into `<cache>/blobs/<algorithm>/<first 2 hex>/<hex>`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Callable
from io import FileIO
from pathlib import Path

import anyio.to_thread

from mirror.cache.eviction import Eviction, Reservation
from mirror.cache.layout import CacheLayout
from mirror.registry.errors import DigestInvalid, RegistryError
from mirror.registry.reference import Digest, parse_digest
from mirror.stats import Stats

log = logging.getLogger(__name__)

READ_CHUNK = 1024 * 1024


class BlobStore:
    """The blob files, with an in-memory LRU index of what is committed (its `eviction`).

    The files are the truth: a blob's size is its file's size and its last use is its
    mtime (refreshed at most hourly), so the index is rebuilt from one directory scan at
    start-up and can never disagree with the disk after a crash.
    """

    def __init__(
        self,
        layout: CacheLayout,
        max_size: int | None = None,
        stats: Stats | None = None,
        inventory_max_age: float | None = None,
    ) -> None:
        self.layout = layout
        self.root = layout.root
        self.tmp = layout.tmp
        self.stats = stats or Stats()
        self.eviction = Eviction(layout, max_size, self.stats, inventory_max_age)

    # What is cached and the room it takes, as the eviction indexes them: one face for callers.

    @property
    def count(self) -> int:
        return self.eviction.count

    @property
    def total_bytes(self) -> int:
        return self.eviction.total_bytes

    @property
    def scanned(self) -> bool:
        return self.eviction.scanned

    @property
    def disk_margin(self) -> int:
        return self.eviction.disk_margin

    @property
    def max_size(self) -> int | None:
        return self.eviction.max_size

    @max_size.setter
    def max_size(self, max_size: int | None) -> None:
        self.eviction.max_size = max_size

    @property
    def pinned(self) -> frozenset[str]:
        """The user's pinned images' digests: never evicted."""
        return self.eviction.pinned

    @pinned.setter
    def pinned(self, digests: frozenset[str]) -> None:
        self.eviction.pinned = digests

    @property
    def on_removed(self) -> Callable[[list[Digest]], None] | None:
        return self.eviction.on_removed

    @on_removed.setter
    def on_removed(self, callback: Callable[[list[Digest]], None] | None) -> None:
        self.eviction.on_removed = callback

    def digests(self) -> list[str]:
        return self.eviction.digests()

    def touch(self, digest: Digest) -> None:
        self.eviction.touch(digest)

    def used_since(self, digest: Digest, when: float) -> bool:
        return self.eviction.used_since(digest, when)

    def add_inventory(self, *digests: Digest) -> None:
        self.eviction.add_inventory(*digests)

    async def make_room(self, size: int | None) -> Reservation | None:
        return await self.eviction.make_room(size)

    def release(self, reservation: Reservation) -> None:
        self.eviction.release(reservation)

    async def evict_bytes(self, amount: int) -> None:
        await self.eviction.evict_bytes(amount)

    async def evict_to_fit(self) -> None:
        await self.eviction.evict_to_fit()

    async def expire(self, max_age: float) -> None:
        await self.eviction.expire(max_age)

    async def remove(self, digests: list[Digest]) -> None:
        await self.eviction.remove(digests)

    # The files.

    def path(self, digest: Digest) -> Path:
        return self.layout.blob_path(digest)

    def open_sync(self) -> None:
        """Sweep what a crash left, and index what is cached (the directory is prepared): for tools."""
        self.sweep()
        self.eviction.index(self._scan_files())

    def sweep(self) -> None:
        """Remove temp files left by a crash, and partial downloads nobody came back for in a day."""
        for leftover in self.tmp.iterdir():
            log.info("removing leftover temp file %s", leftover.name)
            leftover.unlink(missing_ok=True)
        for partial in self.layout.partial.glob("*/*"):
            if time.time() - partial.stat().st_mtime > PARTIAL_MAX_AGE:
                log.info("removing partial download %s, untouched for a day", partial.name)
                partial.unlink(missing_ok=True)
        filesystem = os.statvfs(self.root)
        self.eviction.disk_margin = min(self.eviction.disk_margin, filesystem.f_blocks * filesystem.f_frsize // 50)

    async def scan(self) -> None:
        """Build the LRU order from one directory scan, in a thread, while the server already serves.

        Serving needs no index (a blob's file is the blob); only eviction does, so it waits for this.
        Blobs used since start-up keep their place: the most recent.
        """
        started = time.monotonic()
        found = await anyio.to_thread.run_sync(self._scan_files)
        self.eviction.index(found)
        log.info(
            "indexed %d cached blobs (%d bytes) in %.1f s", self.count, self.total_bytes, time.monotonic() - started
        )

    def _scan_files(self) -> list[tuple[float, Digest, int]]:
        found: list[tuple[float, Digest, int]] = []
        for algorithm_dir in self.layout.blobs.iterdir():
            for prefix_dir in algorithm_dir.iterdir():
                with os.scandir(prefix_dir) as entries:
                    for entry in entries:
                        try:
                            digest = parse_digest(f"{algorithm_dir.name}:{entry.name}")
                        except RegistryError:
                            continue
                        try:
                            stat = entry.stat()
                        except FileNotFoundError:
                            continue  # removed while the scan ran
                        found.append((stat.st_mtime, digest, stat.st_size))
        found.sort(key=lambda item: item[0])
        return found

    async def stat(self, digest: Digest) -> os.stat_result | None:
        try:
            stat = await anyio.to_thread.run_sync(_stat_and_touch, self.path(digest))
        except FileNotFoundError:
            self.eviction.forget(digest)
            return None
        self.eviction.used(digest, stat.st_size)
        return stat

    async def open(self, digest: Digest) -> tuple[FileIO, int] | None:
        """Open a cached blob for reading. An open file stays readable even if evicted meanwhile."""
        try:
            file, size = await anyio.to_thread.run_sync(_open_and_touch, self.path(digest))
        except FileNotFoundError:
            self.eviction.forget(digest)
            return None
        self.eviction.used(digest, size)
        return file, size

    def size_now(self, digest: Digest) -> int | None:
        """A blocking stat, for the one place that must not pause between check and act."""
        try:
            return os.stat(self.path(digest)).st_size
        except FileNotFoundError:
            return None

    def writer(self, digest: Digest) -> BlobWriter:
        return BlobWriter(self, digest)

    def partial_exists_now(self, digest: Digest) -> bool:
        """A blocking stat of the local cache disk (microseconds), as size_now: a trip to a thread
        for every cold download, to find no partial download in the common case, delayed each one's start."""
        return self.layout.partial_path(digest).exists()

    async def place(
        self, digest: Digest, fd: int, written: Path, size: int, reservation: Reservation | None = None
    ) -> Path:
        """Make a written and verified file the blob: flush it, rename it into place, index it; closes `fd`."""
        final = self.path(digest)
        await anyio.to_thread.run_sync(sync_and_close, fd, final.parent)
        # The rename happens on the event loop so that readers never see a half-way state.
        os.replace(written, final)
        self.eviction.committed(digest, size, reservation)
        await anyio.to_thread.run_sync(fsync_directory, final.parent)
        return final

    async def read(self, digest: Digest) -> bytes | None:
        """Read a small cached object (a manifest) whole."""
        try:
            data = await anyio.to_thread.run_sync(self.path(digest).read_bytes)
        except FileNotFoundError:
            self.eviction.forget(digest)
            return None
        self.eviction.used(digest, len(data))
        return data

    async def put(self, digest: Digest, data: bytes) -> None:
        """Store a small object (a manifest) whose bytes are already in memory."""
        writer = self.writer(digest)
        try:
            writer.write(data)
            await writer.commit(len(data))
        finally:
            writer.discard()
        await self.eviction.evict_to_fit()


# A partial download nobody resumed for this long is removed at start-up.
PARTIAL_MAX_AGE = 86400.0

# How stale a blob's mtime may get before a use refreshes it: the LRU order on disk is
# only needed at start-up, so an hourly resolution is plenty and saves a write per hit.
TOUCH_INTERVAL = 3600.0


def _stat_and_touch(path: Path) -> os.stat_result:
    stat = os.stat(path)
    if time.time() - stat.st_mtime > TOUCH_INTERVAL:
        os.utime(path)
    return stat


def _open_and_touch(path: Path) -> tuple[FileIO, int]:
    file = FileIO(path, "r")
    stat = os.fstat(file.fileno())
    if time.time() - stat.st_mtime > TOUCH_INTERVAL:
        os.utime(file.fileno())
    return file, stat.st_size


class BlobWriter:
    """Writes one small blob (a manifest, an import) to a temp file, hashing as it goes; `commit` makes it visible.

    Downloads write a `mirror.transfer.partial.PartialFile` instead, which a restart keeps.
    """

    def __init__(self, store: BlobStore, digest: Digest) -> None:
        self.store = store
        self.digest = digest
        self.size = 0
        self._hash = hashlib.new(digest.algorithm)
        fd, name = tempfile.mkstemp(dir=store.tmp, prefix=f"{digest.hex[:16]}.")
        self.temp_path = Path(name)
        self.fd: int | None = fd
        self.path = self.temp_path

    def write(self, chunk: bytes) -> None:
        # A chunk goes to the page cache in microseconds; fsync, the slow part, is in commit.
        assert self.fd is not None
        view = memoryview(chunk)
        while view:
            view = view[os.write(self.fd, view) :]
        self._hash.update(chunk)
        self.size += len(chunk)

    def verify(self, expected_size: int | None) -> None:
        """Check the size and digest of what was written; raise DigestInvalid if they differ."""
        check_written(self.digest, self._hash, self.size, expected_size)

    async def commit(self, expected_size: int | None) -> None:
        """Verify, flush to disk, and rename into place."""
        self.verify(expected_size)
        fd, self.fd = self.fd, None
        assert fd is not None
        self.path = await self.store.place(self.digest, fd, self.temp_path, self.size)

    def discard(self) -> None:
        """Drop the temp file if the blob was not committed; a no-op after commit."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.path == self.temp_path:
            self.temp_path.unlink(missing_ok=True)


def check_written(digest: Digest, hasher: hashlib._Hash, size: int, expected_size: int | None) -> None:
    """Raise DigestInvalid unless what was written has the announced size and hashes to the digest."""
    if expected_size is not None and size != expected_size:
        raise DigestInvalid(f"upstream sent {size} bytes, announced {expected_size}", detail={"digest": str(digest)})
    if hasher.hexdigest() != digest.hex:
        raise DigestInvalid(
            "upstream content does not match its digest",
            detail={"digest": str(digest), "actual": f"{digest.algorithm}:{hasher.hexdigest()}"},
        )


def sync_and_close(fd: int, directory: Path) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    directory.mkdir(parents=True, exist_ok=True)


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
