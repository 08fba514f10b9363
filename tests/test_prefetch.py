"""`mirror prefetch` warms the cache through the running mirror, by platform."""

from __future__ import annotations

import subprocess
import sys

import pytest
from support import Image, MirrorProcess, Registry

from mirror.registry.reference import ImageRef, parse_image


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("alpine", ImageRef(None, "library/alpine", "latest")),
        ("alpine:3.19", ImageRef(None, "library/alpine", "3.19")),
        ("org/app:1", ImageRef(None, "org/app", "1")),
        ("ghcr.io/org/app:1.0", ImageRef("ghcr.io", "org/app", "1.0")),
        ("localhost:5000/app", ImageRef("localhost:5000", "app", "latest")),
        ("app@sha256:" + "a" * 64, ImageRef(None, "library/app", "sha256:" + "a" * 64)),
    ],
)
def test_parse_image(text: str, expected: ImageRef) -> None:
    assert parse_image(text) == expected


def prefetch(mirror: MirrorProcess, *args: str) -> subprocess.CompletedProcess[str]:
    config = str(mirror.root / "config.toml")
    command = [sys.executable, "-m", "mirror", "prefetch", "--config", config, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_prefetch_then_pull_is_all_hits(mirror: MirrorProcess, registry: Registry, images: dict[str, Image]) -> None:
    multi = images["list"]
    amd64, arm64 = multi.children
    result = prefetch(mirror, "multi:latest", "library/demo")
    assert result.returncode == 0, result.stderr
    assert "MB/s" in result.stderr and "ETA" in result.stderr
    mirror.wait_idle()
    for digest in list(amd64.blobs) + list(images["demo"].blobs):
        assert mirror.blob_path(digest).exists()
    assert not any(mirror.blob_path(d).exists() for d in set(arm64.blobs) - set(amd64.blobs))
    again = prefetch(mirror, "multi:latest")
    assert f"0 blobs fetched, {len(amd64.blobs)} already cached" in again.stderr

    everything = prefetch(mirror, "--all-platforms", "multi:latest")
    assert everything.returncode == 0
    mirror.wait_idle()
    assert all(mirror.blob_path(d).exists() for d in arm64.blobs)


def test_prefetch_reports_a_missing_image(mirror: MirrorProcess) -> None:
    result = prefetch(mirror, "library/nosuch:1")
    assert result.returncode == 1
    assert "404" in result.stderr
    assert "Traceback" not in result.stderr
