"""Fetch ahead: a client's first layer request of an image just served starts the image's other
blobs, once each upstream, and they are cached whether or not a client comes for them; a manifest
alone, or its config alone, starts nothing; `fetch_ahead = false` turns it off."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest
from support import OCI_MANIFEST, Image, MirrorProcess, Pusher, Registry
from tools import tool

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
