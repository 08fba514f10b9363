"""gc, verify and stats on a real cache directory, with and without the server running."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from support import Image, MirrorProcess


def run(command: str, config: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "mirror", command, "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_verify_drops_a_corrupted_blob_and_the_next_pull_refetches(
    mirror: MirrorProcess, images: dict[str, Image]
) -> None:
    digest, data = max(images["demo"].blobs.items(), key=lambda item: len(item[1]))
    url = f"{mirror.url}/v2/library/demo/blobs/{digest}"
    httpx.get(url)
    mirror.wait_idle()
    path = mirror.blob_path(digest)
    with open(path, "r+b") as file:  # bit rot
        file.seek(100)
        file.write(b"\x00" if data[100:101] != b"\x00" else b"\x01")
    out = run("verify", mirror.root / "config.toml")  # while the server runs
    assert "removed 1 " in out
    assert not path.exists()
    again = httpx.get(url)
    assert again.headers["x-cache"] == "MISS"
    assert again.content == data


def test_gc_removes_stale_temp_files_and_orphaned_metadata(mirror: MirrorProcess, images: dict[str, Image]) -> None:
    image = images["oci"]
    httpx.get(f"{mirror.url}/v2/library/ocidemo/manifests/latest", headers={"Accept": image.media_type})
    stale = mirror.cache_dir / "tmp" / "stale.partial"
    fresh = mirror.cache_dir / "tmp" / "fresh.partial"
    stale.write_bytes(b"old")
    fresh.write_bytes(b"new")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    junk = mirror.cache_dir / "blobs" / "sha256" / "zz" / "not-a-digest"
    junk.parent.mkdir(parents=True)
    junk.write_bytes(b"junk")
    mirror.blob_path(image.digest).unlink()  # the manifest file is gone, its metadata is not
    out = run("gc", mirror.root / "config.toml")
    assert "removed 3 " in out
    assert not stale.exists() and fresh.exists() and not junk.exists()


def test_stats_command_with_and_without_the_server(mirror: MirrorProcess, images: dict[str, Image]) -> None:
    digest = next(iter(images["demo"].blobs))
    httpx.get(f"{mirror.url}/v2/library/demo/blobs/{digest}")
    mirror.wait_idle()
    config = mirror.root / "config.toml"
    live = run("stats", config)
    assert "source" in live and "server" in live and "blob_misses" in live
    mirror.stop()
    offline = run("stats", config)
    assert "server not running" in offline
    values = dict(line.split(None, 1) for line in offline.splitlines())
    assert values["cached_blobs"] == "1"
