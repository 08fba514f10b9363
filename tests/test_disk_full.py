"""A cache on a small filesystem: what no longer fits is streamed uncached; eviction makes room."""

from __future__ import annotations

import hashlib
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support import MirrorProcess, Pusher, Registry
from tools import tool

MIB = 1024 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs, mounted for this test only (needs root, as CI runs)."""
    mountpoint = tmp_path / "small-disk"
    mountpoint.mkdir()
    subprocess.run([tool("mount"), "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run([tool("umount"), "-l", str(mountpoint)], check=True)


def test_full_disk_streams_uncached_and_eviction_recovers(registry: Registry, small_disk: Path) -> None:
    rng = random.Random(7)
    blobs = [rng.randbytes(6 * MIB) for _ in range(6)]
    huge = rng.randbytes(30 * MIB)
    with Pusher(registry.url) as pusher:
        digests = [pusher.blob("library/diskfull", data) for data in blobs]
        huge_digest = pusher.blob("library/diskfull", huge)
    process = MirrorProcess(small_disk / "m", {"docker.io": registry.url})
    process.start()
    try:
        # Larger than the whole disk: streamed to the client, verified, never stored.
        response = httpx.get(f"{process.url}/v2/library/diskfull/blobs/{huge_digest}", timeout=60)
        assert response.status_code == 200
        assert response.headers["x-cache"] == "BYPASS"
        assert hashlib.sha256(response.content).hexdigest() == huge_digest.split(":")[1]
        process.wait_idle()
        stats = process.stats()
        assert stats["disk_full"] >= 1
        assert stats["uncached_downloads"] == 1
        assert not process.blob_path(huge_digest).exists()
        assert list((process.cache_dir / "tmp").iterdir()) == []

        # 36 MiB of blobs through a 24 MiB disk: the oldest make room for the newest.
        for digest, data in zip(digests, blobs, strict=True):
            got = httpx.get(f"{process.url}/v2/library/diskfull/blobs/{digest}", timeout=60)
            assert got.content == data
            process.wait_idle()
        assert process.blob_path(digests[-1]).exists()
        assert not process.blob_path(digests[0]).exists()
        assert process.stats()["evictions"] >= 2
        assert list((process.cache_dir / "tmp").iterdir()) == []
        assert "disk is full" in process.log_path.read_text()
    finally:
        process.stop()
