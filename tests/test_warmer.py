"""[[prefetch]] in the config keeps chosen tags warm, fetching new digests as they appear."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support import Image, MirrorProcess, Pusher, Registry

from mirror.config import ConfigError, from_dict


def wait_for(condition: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not warmed in time"
        time.sleep(0.1)


def test_prefetch_config_keeps_a_tag_warm(tmp_path: Path, registry: Registry, images: dict[str, Image]) -> None:
    with Pusher(registry.url) as pusher:
        first = pusher.image("library/warm", "stable", [65536], seed=700)
    config = 'tag_ttl = "0s"\n\n[[prefetch]]\nimage = "warm:stable"\nrefresh = "1s"\n\n'
    config += '[[prefetch]]\nimage = "library/multi:latest"\nplatforms = ["linux/arm64"]\nrefresh = "1h"\n'
    process = MirrorProcess(tmp_path / "m", {"docker.io": registry.url}, extra_config=config).start()
    try:
        amd64, arm64 = images["list"].children
        wait_for(lambda: all(process.blob_path(d).exists() for d in first.blobs))
        wait_for(lambda: all(process.blob_path(d).exists() for d in arm64.blobs))
        assert not any(process.blob_path(d).exists() for d in set(amd64.blobs) - set(arm64.blobs))
        with Pusher(registry.url) as pusher:
            second = pusher.image("library/warm", "stable", [65536], seed=701)
        wait_for(lambda: all(process.blob_path(d).exists() for d in second.blobs))
    finally:
        process.stop()


@pytest.mark.parametrize(
    ("entry", "key"),
    [
        ({}, "prefetch[0].image"),
        ({"image": "a", "platforms": ["amd64"]}, "prefetch[0].platforms"),
        ({"image": "a", "refresh": "0s"}, "prefetch[0].refresh"),
        ({"image": "a", "every": "1h"}, "prefetch[0].every"),
    ],
)
def test_prefetch_config_errors(entry: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as error:
        from_dict({"prefetch": [entry]})
    assert error.value.key == key
