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
from collections import OrderedDict
from collections.abc import Callable
from io import FileIO
from pathlib import Path

import anyio.to_thread

from mirror.cache.layout import CacheLayout
from mirror.registry.errors import DigestInvalid, RegistryError
from mirror.registry.reference import Digest, parse_digest
from mirror.stats import Stats

log = logging.getLogger(__name__)

READ_CHUNK = 1024 * 1024


class BlobStore:
    """The blob files, with an in-memory LRU index of what is committed.

    The files are the truth: a blob's size is its file's size and its last use is its
    mtime (refreshed at most hourly), so the index is rebuilt from one directory scan at
    start-up and can never disagree with the disk after a crash.
    """

    def __init__(
        self,
        layout: CacheLayout,
        max_size: int | None = None,
        stats: Stats | None = None,
        pin_max_age: float | None = None,
    ) -> None:
        self.layout = layout
        self.root = layout.root
        self.tmp = layout.tmp
        self.max_size = max_size
        self.stats = stats or Stats()
        # digest → (size, last use), least recently used first.
        self._lru: OrderedDict[Digest, tuple[int, float]] = OrderedDict()
        self._evicting: set[Digest] = set()
        # The inventory (manifests, image configs): kept when room is made, unless unused for pin_max_age.
        self._pinned: set[Digest] = set()
        self.pin_max_age = pin_max_age
        self.total_bytes = 0
        self.reserved = 0
        # Room kept free on the cache's filesystem beyond a download's size.
        self.disk_margin = 64 * 1024 * 1024
        self.scanned = False  # the LRU index holds every file: until then, nothing is evicted
        self.forever: frozenset[str] = frozenset()  # pinned images' digests: never evicted
        self.on_removed: Callable[[list[Digest]], None] | None = None  # evicted or removed (a fleet forgets them)

    @property
    def count(self) -> int:
        return len(self._lru)

    def digests(self) -> list[str]:
        """Every indexed blob's digest (the fleet registers them)."""
        return [str(digest) for digest in self._lru]

    def path(self, digest: Digest) -> Path:
        return self.layout.blob_path(digest)

    def open_sync(self) -> None:
        """Sweep what a crash left, and index what is cached (the directory is prepared): for tools."""
        self.sweep()
        self._index(self._scan_files())

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
        self.disk_margin = min(self.disk_margin, filesystem.f_blocks * filesystem.f_frsize // 50)

    async def scan(self) -> None:
        """Build the LRU order from one directory scan, in a thread, while the server already serves.

        Serving needs no index (a blob's file is the blob); only eviction does, so it waits for this.
        Blobs used since start-up keep their place: the most recent.
        """
        started = time.monotonic()
        found = await anyio.to_thread.run_sync(self._scan_files)
        self._index(found)
        log.info(
            "indexed %d cached blobs (%d bytes) in %.1f s", len(self._lru), self.total_bytes, time.monotonic() - started
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

    def _index(self, found: list[tuple[float, Digest, int]]) -> None:
        used_since = self._lru
        self._lru = OrderedDict((digest, (size, mtime)) for mtime, digest, size in found if digest not in used_since)
        self._lru.update(used_since)
        self.total_bytes = sum(size for size, _ in self._lru.values())
        self.scanned = True

    def _used(self, digest: Digest, size: int) -> None:
        """Mark a blob as just used; a file the index did not know (an import) joins it."""
        if digest in self._evicting:
            return
        if digest in self._lru:
            self._lru.move_to_end(digest)
        else:
            self.total_bytes += size
        self._lru[digest] = (size, time.time())

    def touch(self, digest: Digest) -> None:
        """Mark an indexed blob as used without touching the disk (a manifest served from memory)."""
        entry = self._lru.get(digest)
        if entry is not None:
            self._used(digest, entry[0])

    def _forget(self, digest: Digest) -> None:
        entry = self._lru.pop(digest, None)
        if entry is not None:
            self.total_bytes -= entry[0]

    async def stat(self, digest: Digest) -> os.stat_result | None:
        try:
            stat = await anyio.to_thread.run_sync(_stat_and_touch, self.path(digest))
        except FileNotFoundError:
            self._forget(digest)
            return None
        self._used(digest, stat.st_size)
        return stat

    async def open(self, digest: Digest) -> tuple[FileIO, int] | None:
        """Open a cached blob for reading. An open file stays readable even if evicted meanwhile."""
        try:
            file, size = await anyio.to_thread.run_sync(_open_and_touch, self.path(digest))
        except FileNotFoundError:
            self._forget(digest)
            return None
        self._used(digest, size)
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

    async def place(self, digest: Digest, fd: int, written: Path, size: int) -> Path:
        """Make a written and verified file the blob: flush it, rename it into place, index it; closes `fd`."""
        final = self.path(digest)
        await anyio.to_thread.run_sync(sync_and_close, fd, final.parent)
        # The rename happens on the event loop so that readers never see a half-way state.
        os.replace(written, final)
        self._used(digest, size)
        await anyio.to_thread.run_sync(fsync_directory, final.parent)
        return final

    async def make_room(self, size: int | None) -> bool:
        """Reserve room for a blob about to be written, within max_size and on the disk.

        False when it cannot fit: larger than max_size, or the disk stays too full after
        evicting least recently used blobs. The caller then streams it without caching.
        """
        if size is not None and self.max_size is not None and size > self.max_size:
            return False
        self.reserved += size or 0
        await self.evict_to_fit()
        need = (size or 0) + self.disk_margin
        shortfall = need - await anyio.to_thread.run_sync(self.free_bytes)
        if shortfall > 0:
            await self.evict_bytes(shortfall)
            shortfall = need - await anyio.to_thread.run_sync(self.free_bytes)
        if shortfall > 0:
            self.reserved -= size or 0
            self.stats.disk_full += 1
            log.warning("cache disk is full: %d more bytes needed; streaming without caching", shortfall)
            return False
        return True

    def free_bytes(self) -> int:
        stat = os.statvfs(self.root)
        return stat.f_bavail * stat.f_frsize

    def used_since(self, digest: Digest, when: float) -> bool:
        entry = self._lru.get(digest)
        return entry is not None and entry[1] >= when

    def pin(self, *digests: Digest) -> None:
        """Keep these when room is made: manifests and configs are what `mirror ls` shows, and small."""
        self._pinned.update(digests)

    def _kept(self, digest: Digest, last_use: float, now: float) -> bool:
        """Whether a blob is inventory still in use: pinned, and used within pin_max_age."""
        return digest in self._pinned and (self.pin_max_age is None or last_use >= now - self.pin_max_age)

    def _least_recent(self, amount: int) -> list[Digest]:
        """Least recently used blobs totalling at least `amount` bytes, if there are that many.

        Layers go first. Only if they are not enough does the inventory go too, oldest first:
        max_size is a promise, and the inventory is a courtesy within it.
        """
        victims: list[Digest] = []
        now = time.time()
        for inventory in (False, True):
            for digest, (size, last_use) in self._lru.items():
                if amount <= 0:
                    return victims
                if str(digest) in self.forever:
                    continue
                if self._kept(digest, last_use, now) == inventory:
                    victims.append(digest)
                    amount -= size
        return victims

    async def evict_bytes(self, amount: int) -> None:
        """Remove least recently used blobs totalling at least `amount` bytes, if there are that many."""
        await self._evict(self._least_recent(amount))

    def release(self, size: int) -> None:
        self.reserved -= size

    async def evict_to_fit(self) -> None:
        """Remove least recently used blobs until committed plus reserved bytes fit max_size."""
        if self.max_size is not None:
            await self._evict(self._least_recent(self.total_bytes + self.reserved - self.max_size))

    async def expire(self, max_age: float) -> None:
        """Remove blobs nobody has used for max_age seconds."""
        now = time.time()
        victims: list[Digest] = []
        for digest, (_, last_use) in self._lru.items():
            if last_use >= now - max_age:
                break
            if not self._kept(digest, last_use, now) and str(digest) not in self.forever:
                victims.append(digest)  # tag_max_age may be longer than max_age; pins are for good
        await self._evict(victims)

    async def _evict(self, victims: list[Digest]) -> None:
        victims = [digest for digest in victims if str(digest) not in self.forever]
        if not victims:
            return
        if not self.scanned:
            log.debug("not evicting before the start-up scan has indexed every blob")
            return
        for digest in victims:
            self.stats.evictions += 1
            self.stats.evicted_bytes += self._lru[digest][0]
            self._forget(digest)
            self._pinned.discard(digest)
            self._evicting.add(digest)
        try:
            await anyio.to_thread.run_sync(_unlink_all, [self.path(d) for d in victims])
        finally:
            self._evicting.difference_update(victims)
        if self.on_removed is not None:
            self.on_removed(victims)
        log.debug("evicted %d blobs", len(victims))

    async def remove(self, digests: list[Digest]) -> None:
        """Remove these blobs on request (`mirror rm`), not to make room: not counted as evictions."""
        for digest in digests:
            self._forget(digest)
            self._pinned.discard(digest)
        await anyio.to_thread.run_sync(_unlink_all, [self.path(d) for d in digests])
        if self.on_removed is not None:
            self.on_removed(digests)

    async def read(self, digest: Digest) -> bytes | None:
        """Read a small cached object (a manifest) whole."""
        try:
            data = await anyio.to_thread.run_sync(self.path(digest).read_bytes)
        except FileNotFoundError:
            self._forget(digest)
            return None
        self._used(digest, len(data))
        return data

    async def put(self, digest: Digest, data: bytes) -> None:
        """Store a small object (a manifest) whose bytes are already in memory."""
        writer = self.writer(digest)
        try:
            writer.write(data)
            await writer.commit(len(data))
        finally:
            writer.discard()
        await self.evict_to_fit()


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


def _unlink_all(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


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
