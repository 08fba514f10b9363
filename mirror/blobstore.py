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
from collections.abc import AsyncIterator
from pathlib import Path

import anyio.to_thread

from mirror.errors import DigestInvalid
from mirror.reference import Digest

log = logging.getLogger(__name__)

READ_CHUNK = 1024 * 1024


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.tmp = root / "tmp"
        self.count = 0
        self.total_bytes = 0

    def path(self, digest: Digest) -> Path:
        return self.blobs / digest.algorithm / digest.hex[:2] / digest.hex

    def open_sync(self) -> None:
        """Create the layout, sweep temp files left by a crash, and count what is cached."""
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        for leftover in self.tmp.iterdir():
            log.info("removing leftover temp file %s", leftover.name)
            leftover.unlink(missing_ok=True)
        count = total = 0
        for algorithm_dir in self.blobs.iterdir():
            for prefix_dir in algorithm_dir.iterdir():
                with os.scandir(prefix_dir) as entries:
                    for entry in entries:
                        count += 1
                        total += entry.stat().st_size
        self.count, self.total_bytes = count, total

    async def stat(self, digest: Digest) -> os.stat_result | None:
        try:
            return await anyio.to_thread.run_sync(os.stat, self.path(digest))
        except FileNotFoundError:
            return None

    def size_now(self, digest: Digest) -> int | None:
        """A blocking stat, for the one place that must not pause between check and act."""
        try:
            return os.stat(self.path(digest)).st_size
        except FileNotFoundError:
            return None

    def writer(self, digest: Digest) -> BlobWriter:
        return BlobWriter(self, digest)

    def committed(self, size: int) -> None:
        self.count += 1
        self.total_bytes += size

    async def read(self, digest: Digest) -> bytes | None:
        """Read a small cached object (a manifest) whole."""
        try:
            return await anyio.to_thread.run_sync(self.path(digest).read_bytes)
        except FileNotFoundError:
            return None

    async def put(self, digest: Digest, data: bytes) -> None:
        """Store a small object (a manifest) whose bytes are already in memory."""
        writer = self.writer(digest)
        try:
            writer.write(data)
            await writer.commit(len(data))
        finally:
            writer.discard()


class BlobWriter:
    """Writes one blob to a temp file, hashing as it goes; `commit` makes it visible."""

    def __init__(self, store: BlobStore, digest: Digest) -> None:
        self.store = store
        self.digest = digest
        self.size = 0
        self._hash = hashlib.new(digest.algorithm)
        fd, name = tempfile.mkstemp(dir=store.tmp, prefix=f"{digest.hex[:16]}.")
        self.fd: int | None = fd
        self.temp_path = Path(name)
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
        if expected_size is not None and self.size != expected_size:
            raise DigestInvalid(
                f"upstream sent {self.size} bytes, announced {expected_size}", detail={"digest": str(self.digest)}
            )
        if self._hash.hexdigest() != self.digest.hex:
            raise DigestInvalid(
                "upstream content does not match its digest",
                detail={"digest": str(self.digest), "actual": f"{self.digest.algorithm}:{self._hash.hexdigest()}"},
            )

    async def commit(self, expected_size: int | None) -> None:
        """Verify, flush to disk, and rename into place."""
        self.verify(expected_size)
        fd, self.fd = self.fd, None
        assert fd is not None
        final = self.store.path(self.digest)
        await anyio.to_thread.run_sync(_sync_and_close, fd, final.parent)
        # The rename happens on the event loop so that readers never see a half-way state.
        os.replace(self.temp_path, final)
        self.path = final
        self.store.committed(self.size)
        await anyio.to_thread.run_sync(_fsync_directory, final.parent)

    def discard(self) -> None:
        """Drop the temp file if the blob was not committed; a no-op after commit."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.path == self.temp_path:
            self.temp_path.unlink(missing_ok=True)


def _sync_and_close(fd: int, directory: Path) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    directory.mkdir(parents=True, exist_ok=True)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def iter_file(path: Path, start: int, end: int) -> AsyncIterator[bytes]:
    """Yield bytes [start, end) of a complete file, reading off the event loop."""
    fd = await anyio.to_thread.run_sync(os.open, path, os.O_RDONLY)
    try:
        position = start
        while position < end:
            chunk = await anyio.to_thread.run_sync(os.pread, fd, min(READ_CHUNK, end - position), position)
            if not chunk:
                raise OSError(f"{path} is shorter than expected")
            position += len(chunk)
            yield chunk
    finally:
        os.close(fd)
