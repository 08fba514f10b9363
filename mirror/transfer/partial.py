"""A download's file while it is under way: bytes written at their offsets, hashed in order.

The file lives at `partial/<alg>/<hex>`, never at a blob path, so nothing incomplete ever
looks cached. Ranges fetched in parallel land at their offsets; the digest runs over the
contiguous prefix, in order: inline for bytes that extend it, else read back from the page
cache in a thread once the gap before them is filled. A restart keeps the file and, when it
holds more than a prefix, a `.ranges` map of what it holds, which is only ever written after
the bytes it names, so a kill at any moment leaves a map that claims nothing unwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import anyio.to_thread

from mirror.cache.blobs import READ_CHUNK, BlobStore, check_written
from mirror.cache.eviction import Reservation
from mirror.registry.errors import DigestInvalid
from mirror.registry.reference import Digest

# How often the ranges map of a download in parallel is saved, at most.
MAP_INTERVAL = 0.25
HASH_CHUNK = 4 * 1024 * 1024


class PartialFile:
    def __init__(self, store: BlobStore, digest: Digest, fd: int, ranges: list[tuple[int, int]]) -> None:
        self.store = store
        self.digest = digest
        self.path = store.layout.partial_path(digest)
        self.map_path = store.layout.partial_ranges_path(digest)
        self.fd: int | None = fd
        self.ranges = ranges  # sorted, merged [start, end) ranges written
        self._hash = hashlib.new(digest.algorithm)
        self.hashed = 0  # the prefix the hash has covered
        self.catching_up = False  # a thread is hashing bytes read back: no inline hashing meanwhile
        self._mapped = self.map_path.exists() if ranges else False
        self._map_saved = 0.0
        self._buffer: memoryview | None = None  # for hashing bytes read back

    @classmethod
    def create(cls, store: BlobStore, digest: Digest) -> PartialFile:
        path = store.layout.partial_path(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        store.layout.partial_ranges_path(digest).unlink(missing_ok=True)
        return cls(store, digest, os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644), [])

    @classmethod
    def resume(cls, store: BlobStore, digest: Digest) -> PartialFile | None:
        """Open what a restart left, its prefix hashed again; None if there is nothing (blocking: in a thread)."""
        path = store.layout.partial_path(digest)
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return None
        size = os.fstat(fd).st_size
        ranges = _read_map(store.layout.partial_ranges_path(digest), size)
        partial = cls(store, digest, fd, ranges)
        partial._hash_from_file(partial.prefix)
        return partial

    @property
    def prefix(self) -> int:
        """How many bytes from the start are written without a gap."""
        return self.ranges[0][1] if self.ranges and self.ranges[0][0] == 0 else 0

    @property
    def held(self) -> int:
        return sum(end - start for start, end in self.ranges)

    def held_until(self, offset: int) -> int:
        """The end of the written range that holds `offset`; `offset` itself if none does."""
        for start, end in self.ranges:
            if start <= offset < end:
                return end
        return offset

    def next_held(self, offset: int) -> int | None:
        """Where the first written range after `offset` starts; None if none does."""
        return next((start for start, _ in self.ranges if start > offset), None)

    def missing(self, size: int) -> list[tuple[int, int]]:
        """The ranges of [0, size) not written yet."""
        gaps, position = [], 0
        for start, end in self.ranges:
            if start > position:
                gaps.append((position, min(start, size)))
            position = max(position, end)
        if position < size:
            gaps.append((position, size))
        return [(start, end) for start, end in gaps if start < end]

    def write_at(self, offset: int, chunk: bytes | memoryview) -> None:
        # To the page cache in microseconds; fsync, the slow part, is in commit.
        assert self.fd is not None
        if not self._mapped and offset != self.prefix:
            # The first bytes after a gap: from now on the file is more than its prefix, so the map
            # must exist before they do, or a kill would leave the gap to be read as data.
            self._mapped = True
            self.save_map()
        view, position = memoryview(chunk), offset
        while view:
            written = os.pwrite(self.fd, view, position)
            view, position = view[written:], position + written
        self._add(offset, offset + len(chunk))
        if offset == self.hashed and not self.catching_up:
            self._hash.update(chunk)
            self.hashed += len(chunk)
        if self._mapped and time.monotonic() - self._map_saved > MAP_INTERVAL:
            self.save_map()

    def _add(self, start: int, end: int) -> None:
        merged: list[tuple[int, int]] = []
        for range_start, range_end in self.ranges:
            if range_end < start or range_start > end:
                merged.append((range_start, range_end))
            else:
                start, end = min(start, range_start), max(end, range_end)
        merged.append((start, end))
        merged.sort()
        self.ranges = merged

    async def catch_up(self) -> None:
        """Hash the prefix's bytes that were written out of order, reading them back in a thread."""
        if self.catching_up:
            return
        self.catching_up = True
        try:
            while self.hashed < self.prefix:
                await anyio.to_thread.run_sync(self._hash_from_file, min(self.prefix, self.hashed + HASH_CHUNK))
        finally:
            self.catching_up = False

    def _hash_from_file(self, until: int) -> None:
        # Into one buffer, made once: fresh objects in worker threads grow their malloc arenas,
        # which keep the memory.
        assert self.fd is not None
        if self._buffer is None:
            self._buffer = memoryview(bytearray(READ_CHUNK))
        buffer = self._buffer
        while self.hashed < until:
            read = os.preadv(self.fd, [buffer[: until - self.hashed]], self.hashed)
            if not read:
                raise OSError(f"{self.path} is shorter than its ranges say")
            self._hash.update(buffer[:read])
            self.hashed += read

    def matches(self) -> bool:
        """Whether the prefix already hashes to the digest (a restart between the last byte and the rename)."""
        return self.hashed == self.prefix and self._hash.copy().hexdigest() == self.digest.hex

    def verify(self, expected_size: int | None) -> None:
        """Check the size and digest of what was written; raise DigestInvalid if they differ."""
        size = self.prefix
        if (expected_size is not None and size != expected_size) or len(self.ranges) > 1:
            raise DigestInvalid(
                f"upstream sent {self.held} bytes, announced {expected_size}", detail={"digest": str(self.digest)}
            )
        assert self.hashed == size, "catch_up before verify"
        check_written(self.digest, self._hash, size, expected_size)

    async def commit(self, expected_size: int | None, reservation: Reservation | None = None) -> None:
        """Verify, flush to disk, and rename into the blob path (handing back the room reserved for it)."""
        self.verify(expected_size)
        fd, self.fd = self.fd, None
        assert fd is not None
        self.path = await self.store.place(self.digest, fd, self.path, self.prefix, reservation)
        self.map_path.unlink(missing_ok=True)

    def save_map(self) -> None:
        """Write the ranges held, atomically; only ranges whose bytes are already written."""
        if not self._mapped:
            return
        temp = self.map_path.with_name(self.map_path.name + ".new")
        temp.write_text(json.dumps(self.ranges))
        os.replace(temp, self.map_path)
        self._map_saved = time.monotonic()

    def keep(self) -> None:
        """Close without removing: the next start carries on from what is written."""
        if self.path != self.store.layout.partial_path(self.digest):
            return  # committed
        self.save_map()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def discard(self) -> None:
        """Drop the file and its map unless committed; a no-op after commit."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.path == self.store.layout.partial_path(self.digest):
            self.path.unlink(missing_ok=True)
            self.map_path.unlink(missing_ok=True)


def _read_map(path: Path, size: int) -> list[tuple[int, int]]:
    """The ranges a partial file holds: its map's, within its size; without a map, its whole prefix."""
    try:
        saved = json.loads(path.read_text())
        ranges = sorted((int(start), min(int(end), size)) for start, end in saved)
    except FileNotFoundError:
        return [(0, size)] if size else []
    except (ValueError, TypeError):
        return []  # an unreadable map: trust nothing, start afresh
    return [(start, end) for start, end in ranges if 0 <= start < end]
