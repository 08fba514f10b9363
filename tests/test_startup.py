"""Start-up with a large cache: serving at once, every answer right, eviction only after the scan.

The benchmark measures the time with 1,000,000 blobs after dropping the page cache; this is
the smoke size for every run.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import httpx
from support import MirrorProcess, Registry

from mirror.cache.format import prepare
from mirror.cache.layout import CacheLayout
from mirror.registry.reference import parse_digest

BLOBS = 100_000
BLOB_SIZE = 64


def fill(cache: Path, count: int) -> list[tuple[str, bytes]]:
    """`count` small blob files with correct names, oldest first; returns (digest, bytes) of each."""
    layout = CacheLayout(cache)
    prepare(layout)
    made = []
    now = time.time()
    for n in range(count):
        data = n.to_bytes(8, "big") * (BLOB_SIZE // 8)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = layout.blob_path(parse_digest(digest))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.utime(path, (now - count + n, now - count + n))  # an LRU order: the first is the oldest
        made.append((digest, data))
    return made


def test_serving_before_the_index_is_built(tmp_path: Path, registry: Registry) -> None:
    mirror = MirrorProcess(tmp_path / "m", {"docker.io": registry.url})
    blobs = fill(mirror.cache_dir, BLOBS)
    budget = BLOB_SIZE * BLOBS // 2
    mirror.extra_config = f"max_size = {budget}"
    started = time.monotonic()
    mirror.start()
    oldest_digest, oldest = blobs[0]
    newest_digest, newest = blobs[-1]
    first = httpx.get(f"{mirror.url}/v2/library/any/blobs/{newest_digest}")
    answered = time.monotonic() - started
    early = mirror.stats()
    try:
        assert first.status_code == 200 and first.content == newest, "right from the first request"
        assert first.headers["x-cache"] == "HIT"
        if not early["blob_index_ready"]:
            assert early["evictions"] == 0, "nothing is evicted before the scan has indexed every blob"
        deadline = time.monotonic() + 60
        while not (stats := mirror.stats())["blob_index_ready"]:
            assert time.monotonic() < deadline, "the start-up scan never finished"
            time.sleep(0.1)
        deadline = time.monotonic() + 30
        while (stats := mirror.stats())["cached_bytes"] > budget and time.monotonic() < deadline:
            time.sleep(0.1)
        assert stats["cached_bytes"] <= budget, "after the scan, max_size holds"
        assert stats["evictions"] >= BLOBS // 2
        assert not mirror.blob_path(oldest_digest).exists(), "the least recently used went first"
        again = httpx.get(f"{mirror.url}/v2/library/any/blobs/{newest_digest}")
        assert again.status_code == 200 and again.content == newest
        assert oldest  # its bytes were right on disk before it went
        print(f"{BLOBS} blobs: first answer {answered:.2f} s after the start, index ready: {early['blob_index_ready']}")
    finally:
        mirror.stop()
