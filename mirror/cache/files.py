"""Serving a cached blob file: its bytes as views of a read-only mapping, the page cache to the socket."""

from __future__ import annotations

import mmap
import os
from collections.abc import AsyncIterator
from io import FileIO

SEND_CHUNK = 4 * 1024 * 1024


async def iter_file(file: FileIO, start: int, end: int) -> AsyncIterator[bytes | memoryview]:
    """Yield bytes [start, end) of an open cached file as views of a read-only mapping; closes the file.

    The bytes go from the page cache to the socket without a copy in Python (the next best
    thing to sendfile, which ASGI servers do not offer): about 1.6× the throughput of
    reading chunks in a thread. Each next chunk is requested ahead with MADV_WILLNEED, so
    touching it rarely waits for the disk. A blob file is never truncated, only unlinked,
    so the mapping stays valid; it is released when the server drops the last view.
    """
    try:
        if end <= start:
            return
        mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        if os.fstat(file.fileno()).st_size < end:
            raise OSError(f"{file.name!r} is shorter than expected")
        view = memoryview(mapped)
        position = start
        while position < end:
            stop = min(position + SEND_CHUNK, end)
            if stop < end:
                ahead = stop - stop % mmap.PAGESIZE
                mapped.madvise(mmap.MADV_WILLNEED, ahead, min(SEND_CHUNK, end - ahead))
            yield view[position:stop]
            position = stop
    finally:
        file.close()
