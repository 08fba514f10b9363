"""Writing tars as a stream, and reading blobs back verified."""

from __future__ import annotations

import gzip
import hashlib
import posixpath
import tarfile
from collections.abc import Iterator
from typing import IO, BinaryIO

from mirror.commands.archive.names import CHUNK, ArchiveError


class TarWriter:
    """A minimal streaming tar writer on a seekable file.

    A member whose size is not known in advance (a layer being decompressed) gets a
    placeholder header that is rewritten once its data is written, so nothing is held
    in memory or written twice.
    """

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.directories: set[str] = set()

    def _header(self, name: str, size: int, directory: bool = False) -> bytes:
        info = tarfile.TarInfo(name)
        info.size = size
        info.mtime = 0  # the same cache exports to the same bytes
        info.mode = 0o755 if directory else 0o644
        info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
        return info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")

    def _parents(self, name: str) -> None:
        parent = posixpath.dirname(name)
        if parent and parent not in self.directories:
            self._parents(parent)
            self.directories.add(parent)
            self.file.write(self._header(parent + "/", 0, directory=True))

    def add_bytes(self, name: str, data: bytes) -> None:
        self._parents(name)
        self.file.write(self._header(name, len(data)))
        self.file.write(data)
        self._pad(len(data))

    def add_stream(self, name: str, chunks: Iterator[bytes], size: int | None) -> int:
        """Write a member from chunks; with size None the header is patched afterwards."""
        self._parents(name)
        start = self.file.tell()
        header = self._header(name, size or 0)
        if size is None and len(header) != tarfile.BLOCKSIZE:
            raise ArchiveError(f"member name too long for a streamed tar member: {name}")
        self.file.write(header)
        written = 0
        for chunk in chunks:
            self.file.write(chunk)
            written += len(chunk)
        self._pad(written)
        if size is None:
            end = self.file.tell()
            self.file.seek(start)
            self.file.write(self._header(name, written))
            self.file.seek(end)
        elif written != size:
            raise ArchiveError(f"{name}: wrote {written} bytes, expected {size}")
        return written

    def _pad(self, size: int) -> None:
        remainder = size % tarfile.BLOCKSIZE
        if remainder:
            self.file.write(b"\0" * (tarfile.BLOCKSIZE - remainder))

    def close(self) -> None:
        self.file.write(b"\0" * (2 * tarfile.BLOCKSIZE))
        remainder = self.file.tell() % tarfile.RECORDSIZE
        if remainder:
            self.file.write(b"\0" * (tarfile.RECORDSIZE - remainder))


def read_chunks(file: IO[bytes]) -> Iterator[bytes]:
    while chunk := file.read(CHUNK):
        yield chunk


def hashed(source: Iterator[bytes], digest: str, what: str) -> Iterator[bytes]:
    """The chunks, hashed on the way; raises after the last one if they do not match `digest`."""
    algorithm, _, expected = digest.partition(":")
    hasher = hashlib.new(algorithm)
    for chunk in source:
        hasher.update(chunk)
        yield chunk
    if hasher.hexdigest() != expected:
        raise ArchiveError(f"{what} does not match its digest {digest}")


def decompressed(file: BinaryIO) -> Iterator[bytes]:
    """A layer's tar bytes: gunzipped if it is gzip, as is if it is a plain tar."""
    magic = file.read(4)
    file.seek(0)
    if magic[:2] == b"\x1f\x8b":
        with gzip.GzipFile(fileobj=file, mode="rb") as unzipped:
            while chunk := unzipped.read(CHUNK):
                yield chunk
    elif magic == b"\x28\xb5\x2f\xfd":
        raise ArchiveError("a zstd-compressed layer cannot be written in docker format (use --format oci)")
    else:
        yield from read_chunks(file)
