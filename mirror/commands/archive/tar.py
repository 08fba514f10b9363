"""Writing tars as a stream, reading them by member, and reading blobs back verified."""

from __future__ import annotations

import gzip
import hashlib
import posixpath
import tarfile
from collections.abc import Iterator
from pathlib import Path
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


def _normalize(name: str) -> str:
    return posixpath.normpath(name.lstrip("/")).removeprefix("./")


class ArchiveReader:
    """A tar archive opened for random access: member headers indexed, data read on demand."""

    def __init__(self, path: Path) -> None:
        try:
            self.tar = tarfile.open(path, "r:")  # noqa: SIM115 - closed by close()
        except FileNotFoundError:
            raise ArchiveError(f"{path}: no such file") from None
        except tarfile.ReadError as exc:
            raise ArchiveError(f"{path}: not a tar archive ({exc}; a compressed one? decompress it first)") from None
        self.members: dict[str, tarfile.TarInfo] = {}
        try:
            for member in self.tar:
                self.members[_normalize(member.name)] = member
        except tarfile.TarError as exc:
            self.tar.close()
            raise ArchiveError(f"{path}: damaged tar archive: {exc}") from None

    def close(self) -> None:
        self.tar.close()

    def member(self, name: str) -> tarfile.TarInfo | None:
        """The regular file at `name`, following symbolic and hard links within the archive."""
        member = self.members.get(_normalize(name))
        for _ in range(16):
            if member is None or member.isreg():
                return member
            if member.issym():
                member = self.members.get(_normalize(posixpath.join(posixpath.dirname(member.name), member.linkname)))
            elif member.islnk():
                member = self.members.get(_normalize(member.linkname))
            else:
                return None
        return None

    def open(self, member: tarfile.TarInfo) -> IO[bytes]:
        file = self.tar.extractfile(member)
        if file is None:
            raise ArchiveError(f"{member.name}: not a file")
        return file

    def read(self, name: str, limit: int) -> bytes | None:
        member = self.member(name)
        if member is None:
            return None
        if member.size > limit:
            raise ArchiveError(f"{name}: {member.size} bytes, more than the {limit} allowed")
        with self.open(member) as file:
            return file.read()
