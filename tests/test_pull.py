"""Pulls through the mirror with skopeo against the real distribution registry."""

from __future__ import annotations

import hashlib
import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from support import ALL_MANIFESTS, Image, MirrorProcess, Pusher, Registry
from tools import tool


def skopeo_copy(mirror: MirrorProcess, reference: str, out: Path) -> None:
    result = subprocess.run(
        [
            tool("skopeo"),
            "copy",
            "--src-tls-verify=false",
            f"docker://127.0.0.1:{mirror.port}/{reference}",
            f"dir:{out}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def verify_dir_copy(out: Path, image: Image) -> None:
    """Every file skopeo wrote hashes to its name, and every blob of the image is there."""
    manifest = json.loads((out / "manifest.json").read_bytes())
    expected = {manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])}
    for digest in expected:
        data = (out / digest.split(":")[1]).read_bytes()
        assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
    assert expected <= set(image.all_blobs())


@pytest.mark.parametrize("kind", ["demo", "oci", "list", "index"])
def test_cold_then_warm_pull(
    kind: str, mirror: MirrorProcess, registry: Registry, images: dict[str, Image], tmp_path: Path
) -> None:
    image = images[kind]
    mark = registry.mark()
    skopeo_copy(mirror, f"{image.repository}:{image.tag}", tmp_path / "cold")
    verify_dir_copy(tmp_path / "cold", image)
    mirror.wait_idle()
    cold = registry.requests_since(mark)
    blob_gets = [path for method, path, _ in cold if method == "GET" and "/blobs/" in path]
    assert len(blob_gets) == len(set(blob_gets)), "each blob fetched once"

    mark = registry.mark()
    skopeo_copy(mirror, f"{image.repository}:{image.tag}", tmp_path / "warm")
    verify_dir_copy(tmp_path / "warm", image)
    assert registry.requests_since(mark) == [], "a warm pull within the tag TTL asks nothing upstream"
    stats = mirror.stats()
    assert stats["blob_hits"] >= len(blob_gets)
    assert stats["manifest_hits"] >= 1


def test_skopeo_inspect(mirror: MirrorProcess, images: dict[str, Image]) -> None:
    result = subprocess.run(
        [tool("skopeo"), "inspect", "--tls-verify=false", f"docker://127.0.0.1:{mirror.port}/demo:latest"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["Digest"] == images["demo"].digest
    assert len(info["Layers"]) == 3


def test_eight_concurrent_clients_fetch_each_blob_once(
    mirror: MirrorProcess, registry: Registry, tmp_path: Path
) -> None:
    with Pusher(registry.url) as pusher:
        image = pusher.image("library/concurrent", "v1", [8 << 20, 4 << 20, 1 << 20], seed=77)
    mark = registry.mark()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: skopeo_copy(mirror, "library/concurrent:v1", tmp_path / f"c{i}"), range(8)))
    for i in range(8):
        verify_dir_copy(tmp_path / f"c{i}", image)
    requests = registry.requests_since(mark)
    blob_gets = [path.rsplit("/", 1)[1] for method, path, _ in requests if method == "GET" and "/blobs/" in path]
    assert sorted(blob_gets) == sorted(image.blobs), "exactly one upstream GET per blob"
    manifest_gets = [p for m, p, _ in requests if m == "GET" and "/manifests/" in p]
    assert len(manifest_gets) == 1, requests


def test_concurrent_downloads_of_one_large_blob_coalesce(mirror: MirrorProcess, registry: Registry) -> None:
    data = hashlib.sha256(b"seed").digest() * ((32 << 20) // 32)
    with Pusher(registry.url) as pusher:
        digest = pusher.blob("library/bigblob", data)
    mark = registry.mark()

    def fetch(_: int) -> str:
        with httpx.stream("GET", f"{mirror.url}/v2/library/bigblob/blobs/{digest}", timeout=60) as response:
            assert response.status_code == 200
            h = hashlib.sha256()
            for chunk in response.iter_bytes():
                h.update(chunk)
            return "sha256:" + h.hexdigest()

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(fetch, range(8)))
    assert results == [digest] * 8
    gets = [p for m, p, _ in registry.requests_since(mark) if m == "GET"]
    assert gets == [f"/v2/library/bigblob/blobs/{digest}"]
    stats = mirror.stats()
    assert stats["blob_misses"] == 1
    assert stats["coalesced"] + stats["blob_hits"] == 7


def test_accept_is_forwarded_and_respected(mirror: MirrorProcess, images: dict[str, Image]) -> None:
    index = images["index"]
    url = f"{mirror.url}/v2/library/ociindex/manifests/latest"
    full = httpx.get(url, headers=[("Accept", a) for a in ALL_MANIFESTS])
    assert full.status_code == 200
    assert full.content == index.manifest
    assert full.headers["content-type"] == index.media_type
    assert full.headers["docker-content-digest"] == index.digest
    # A client that cannot read an index must not be handed the cached one.
    narrow = httpx.get(url, headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
    assert narrow.headers.get("content-type") != index.media_type
    # Several Accept lines are all forwarded: the OCI manifest is found only if the OCI one gets through.
    oci = images["oci"]
    split = httpx.get(
        f"{mirror.url}/v2/library/ocidemo/manifests/latest",
        headers=[("Accept", "application/vnd.docker.distribution.manifest.v2+json"), ("Accept", oci.media_type)],
    )
    assert split.status_code == 200
    assert split.content == oci.manifest


def test_tag_revalidation_uses_head_and_follows_new_pushes(
    tmp_path: Path, registry: Registry, images: dict[str, Image]
) -> None:
    with Pusher(registry.url) as pusher:
        first = pusher.image("library/moving", "stable", [1024], seed=90)
    process = MirrorProcess(tmp_path / "m", {"docker.io": registry.url}, extra_config='tag_ttl = "0s"').start()
    try:
        url = f"{process.url}/v2/library/moving/manifests/stable"
        headers = {"Accept": first.media_type}
        assert httpx.get(url, headers=headers).headers["docker-content-digest"] == first.digest
        mark = registry.mark()
        again = httpx.get(url, headers=headers)
        assert again.headers["x-cache"] == "REVALIDATED"
        assert [m for m, _, _ in registry.requests_since(mark)] == ["HEAD"]
        with Pusher(registry.url) as pusher:
            second = pusher.image("library/moving", "stable", [2048], seed=91)
        moved = httpx.get(url, headers=headers)
        assert moved.headers["docker-content-digest"] == second.digest
        assert moved.content == second.manifest
    finally:
        process.stop()


def test_upstream_down_serves_what_is_cached(tmp_path: Path, images: dict[str, Image]) -> None:
    registry = Registry(tmp_path / "registry").start()
    try:
        with Pusher(registry.url) as pusher:
            image = pusher.image("library/resilient", "latest", [65536, 1024], seed=50)
            pusher.image("library/uncached", "latest", [1024], seed=51)
        process = MirrorProcess(tmp_path / "m", {"docker.io": registry.url}, extra_config='tag_ttl = "0s"').start()
        try:
            skopeo_copy(process, "library/resilient:latest", tmp_path / "before")
            registry.stop()
            skopeo_copy(process, "library/resilient:latest", tmp_path / "after")
            verify_dir_copy(tmp_path / "after", image)
            tag = httpx.get(
                f"{process.url}/v2/library/resilient/manifests/latest", headers={"Accept": image.media_type}
            )
            assert tag.status_code == 200
            assert tag.headers["x-cache"] == "STALE"
            assert process.stats()["manifest_stale"] >= 1

            missing = httpx.get(f"{process.url}/v2/library/uncached/manifests/latest")
            assert missing.status_code == 503
            error = missing.json()["errors"][0]
            assert error["code"] == "UNAVAILABLE"
            assert "docker.io" in error["message"]
            blob = httpx.get(f"{process.url}/v2/library/uncached/blobs/sha256:{'0' * 64}")
            assert blob.status_code == 503
        finally:
            process.stop()
    finally:
        registry.stop()


def test_a_burst_on_a_cold_tag_makes_one_upstream_request(tmp_path: Path, registry: Registry) -> None:
    with Pusher(registry.url) as pusher:
        image = pusher.image("library/burst", "latest", [1024], seed=808)
    process = MirrorProcess(tmp_path / "m", {"docker.io": registry.url}).start()
    try:
        mark = registry.mark()

        def get(_: int) -> int:
            url = f"{process.url}/v2/library/burst/manifests/latest"
            return httpx.get(url, headers={"Accept": image.media_type}).status_code

        with ThreadPoolExecutor(32) as pool:
            assert set(pool.map(get, range(64))) == {200}
        assert registry.requests_since(mark) == [("GET", "/v2/library/burst/manifests/latest", 200)]
    finally:
        process.stop()
