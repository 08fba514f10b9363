"""Fetch ahead: a client's first layer request of an image just served starts the image's other
blobs, once each upstream, and they are cached whether or not a client comes for them; a manifest
alone, or its config alone, starts nothing; `fetch_ahead = false` turns it off. Behind an upstream
that paces each connection (measured on the link's own traffic), small layers come in ranges too."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from pacing import PacedUpstream
from support import OCI_MANIFEST, Image, MirrorProcess, Pusher, Registry
from tools import tool

from mirror.link import PaceMeter

ACCEPT = {"Accept": OCI_MANIFEST}


@pytest.fixture
def image(registry: Registry) -> Image:
    with Pusher(registry.url) as pusher:
        return pusher.image(f"ahead/{uuid.uuid4().hex[:8]}", "v1", [40_000] * 6, seed=31, oci=True)


def blob_gets(registry: Registry, mark: int, image: Image) -> list[str]:
    return [
        path.rsplit("/", 1)[-1]
        for method, path, _ in registry.requests_since(mark)
        if method == "GET" and f"/v2/{image.repository}/blobs/" in path
    ]


def layers(image: Image) -> list[str]:
    return [layer["digest"] for layer in json.loads(image.manifest)["layers"]]


def config_of(image: Image) -> str:
    return str(json.loads(image.manifest)["config"]["digest"])


def cached(mirror: MirrorProcess, digest: str) -> bool:
    return (mirror.cache_dir / "blobs" / "sha256" / digest[7:9] / digest[7:]).is_file()


def wait_cached(mirror: MirrorProcess, digests: list[str], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(cached(mirror, digest) for digest in digests):
        assert time.monotonic() < deadline, [d for d in digests if not cached(mirror, d)]
        time.sleep(0.05)


def test_the_first_layer_starts_the_rest_of_the_image(tmp_path: Path, registry: Registry, image: Image) -> None:
    mirror = MirrorProcess(tmp_path / "m", {"docker.io": registry.url}).start()
    try:
        mark = len(registry.requests())
        base = f"{mirror.url}/v2/{image.repository}"
        assert httpx.get(f"{base}/manifests/v1", headers=ACCEPT).status_code == 200
        first = layers(image)[0]
        # The client asks for one layer and leaves: the others are fetched and verified anyway.
        assert httpx.get(f"{base}/blobs/{first}").content == image.blobs[first]
        wait_cached(mirror, list(image.blobs))
        assert sorted(blob_gets(registry, mark, image)) == sorted(image.blobs)  # each once, config included
        assert mirror.stats()["blobs_fetched_ahead"] == len(image.blobs) - 1
        # The client's next requests are served from the cache: no second upstream request.
        for digest, data in image.blobs.items():
            assert httpx.get(f"{base}/blobs/{digest}").content == data
        assert sorted(blob_gets(registry, mark, image)) == sorted(image.blobs)
    finally:
        mirror.stop()


def test_a_manifest_or_its_config_alone_starts_nothing(tmp_path: Path, registry: Registry, image: Image) -> None:
    mirror = MirrorProcess(tmp_path / "m", {"docker.io": registry.url}).start()
    try:
        mark = len(registry.requests())
        reference = f"docker://127.0.0.1:{mirror.port}/{image.repository}:v1"
        inspect = subprocess.run(
            [tool("skopeo"), "inspect", "--raw", "--tls-verify=false", reference],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert inspect.returncode == 0, inspect.stderr
        time.sleep(1.0)
        assert blob_gets(registry, mark, image) == []  # a manifest-only client: no blob upstream
        # `skopeo inspect` reads the config too: that blob, and nothing more.
        inspect = subprocess.run(
            [tool("skopeo"), "inspect", "--tls-verify=false", reference], capture_output=True, text=True, timeout=60
        )
        assert inspect.returncode == 0, inspect.stderr
        time.sleep(1.0)
        assert blob_gets(registry, mark, image) == [config_of(image)]
        assert mirror.stats()["blobs_fetched_ahead"] == 0
    finally:
        mirror.stop()


def test_fetch_ahead_off(tmp_path: Path, registry: Registry, image: Image) -> None:
    mirror = MirrorProcess(tmp_path / "m", {"docker.io": registry.url}, extra_config="fetch_ahead = false").start()
    try:
        mark = len(registry.requests())
        base = f"{mirror.url}/v2/{image.repository}"
        assert httpx.get(f"{base}/manifests/v1", headers=ACCEPT).status_code == 200
        first = layers(image)[0]
        assert httpx.get(f"{base}/blobs/{first}").status_code == 200
        time.sleep(1.0)
        assert blob_gets(registry, mark, image) == [first]
    finally:
        mirror.stop()


def test_a_whole_pull_costs_one_download_per_blob(tmp_path: Path, registry: Registry, image: Image) -> None:
    mirror = MirrorProcess(tmp_path / "m", {"docker.io": registry.url}).start()
    try:
        mark = len(registry.requests())
        copy = subprocess.run(
            [
                tool("skopeo"),
                "copy",
                "--src-tls-verify=false",
                f"docker://127.0.0.1:{mirror.port}/{image.repository}:v1",
                f"dir:{tmp_path / 'copy'}",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert copy.returncode == 0, copy.stderr
        wait_cached(mirror, list(image.blobs))
        assert sorted(blob_gets(registry, mark, image)) == sorted(image.blobs)
    finally:
        mirror.stop()


def test_the_pace_meter_tells_a_paced_link_from_a_full_one() -> None:
    """Synthetic windows: more connections bring more bytes (paced), or the same (a full link)."""
    paced, full = PaceMeter(now=0.0), PaceMeter(now=0.0)
    now = 0.0
    for connections, seconds in [(1, 3), (4, 3)]:
        for _ in range(seconds * 10):
            now += 0.1
            paced.saw(100_000 * connections, connections, now)  # 1 MB/s per connection
            full.saw(2_500_000, connections, now)  # 25 MB/s whatever the connections
    paced.saw(1, 1, now + 0.1)
    full.saw(1, 1, now + 0.1)
    assert paced.scales and not full.scales
    assert paced.rates[4] == pytest.approx(4 * paced.rates[1], rel=0.1)
    # Windows whose connections came and went, or an idle link, are no samples.
    shaky = PaceMeter(now=0.0)
    for step in range(40):
        shaky.saw(100_000, 1 + step % 4, step * 0.1)
    assert shaky.rates == {}


def test_small_layers_come_in_ranges_once_the_upstream_paces_connections(
    tmp_path: Path, registry: Registry, paced_upstream: Callable[[str], PacedUpstream]
) -> None:
    paced = paced_upstream("1m")  # 1 MiB/s per connection, the link itself unbounded
    with Pusher(registry.url) as pusher:
        # Two layers of unequal size: two connections, then one alone: the meter's two samples.
        first = pusher.image(f"ahead/{uuid.uuid4().hex[:8]}", "v1", [3_500_000, 8_000_000], seed=41, oci=True)
        second = pusher.image(f"ahead/{uuid.uuid4().hex[:8]}", "v1", [6_000_000], seed=42, oci=True)
    mirror = MirrorProcess(tmp_path / "m", {"docker.io": paced.url}).start()
    try:
        for image in (first, second):
            base = f"{mirror.url}/v2/{image.repository}"
            assert httpx.get(f"{base}/manifests/v1", headers=ACCEPT).status_code == 200
            for digest, data in image.blobs.items():
                assert httpx.get(f"{base}/blobs/{digest}", timeout=60).content == data
            if image is first:
                layer = layers(first)[1]
                assert len(paced.blob_gets(layer)) == 1  # an 8 MB layer in one stream, as before
        assert "brings more bytes with more connections" in mirror.log_path.read_text()
        layer = layers(second)[0]
        ranged = paced.blob_gets(layer)
        assert len(ranged) > 1 and all(request.range for request in ranged)  # now in ranges, 2 MiB or more each
        assert paced.body_bytes(layer) == len(second.blobs[layer])
    finally:
        mirror.stop()
