"""`mirror import` and `mirror export` with real skopeo archives, real mirrors and an unreachable upstream."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import httpx
from support import ALL_MANIFESTS, Image, MirrorProcess, Registry
from test_pull import skopeo_copy, verify_dir_copy
from tools import tool

UNREACHABLE = "http://127.0.0.1:9"  # nothing listens on the discard port: an offline site


def mirror_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mirror", *args], capture_output=True, text=True, timeout=120, check=False
    )


def skopeo(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([tool("skopeo"), *args], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return result


def offline_mirror(root: Path) -> MirrorProcess:
    """A mirror whose only upstream cannot be reached; its config is written, the server not started."""
    process = MirrorProcess(root, {"docker.io": UNREACHABLE})
    process.write_config()
    return process


def manifest_digest(mirror: MirrorProcess, repository: str, reference: str) -> str:
    response = httpx.get(
        f"{mirror.url}/v2/{repository}/manifests/{reference}", headers={"Accept": ", ".join(ALL_MANIFESTS)}
    )
    assert response.status_code == 200, response.text
    digest = "sha256:" + hashlib.sha256(response.content).hexdigest()
    assert response.headers["docker-content-digest"] == digest
    return digest


def cached_blobs(cache: Path) -> set[str]:
    return {path.name for path in (cache / "blobs").glob("*/*/*")}


def test_skopeo_oci_archive_imported_serves_offline(
    registry: Registry, images: dict[str, Image], tmp_path: Path
) -> None:
    source = registry.url.removeprefix("http://")
    single, index = images["oci"], images["index"]
    # A full name as the reference, and a tag only (then --repository names the image).
    skopeo(
        "copy",
        "--src-tls-verify=false",
        f"docker://{source}/{single.repository}:latest",
        f"oci-archive:{tmp_path / 'single.tar'}:docker.io/{single.repository}:v1",
    )
    skopeo(
        "copy",
        "--all",
        "--src-tls-verify=false",
        f"docker://{source}/{index.repository}:latest",
        f"oci-archive:{tmp_path / 'index.tar'}:stable",
    )
    # The server runs, and was asked for the image before it was imported (the usual order offline).
    offline = offline_mirror(tmp_path / "offline").start()
    try:
        before = httpx.get(f"{offline.url}/v2/{single.repository}/manifests/v1")
        assert before.status_code == 503, before.text
        config = str(offline.root / "config.toml")
        result = mirror_cli("import", str(tmp_path / "single.tar"), "--config", config)
        assert result.returncode == 0, result.stderr
        assert f"docker.io/{single.repository}:v1 {single.digest}" in result.stdout
        result = mirror_cli("import", str(tmp_path / "index.tar"), "--config", config, "--repository", index.repository)
        assert result.returncode == 0, result.stderr
        assert f"docker.io/{index.repository}:stable {index.digest}" in result.stdout

        assert manifest_digest(offline, single.repository, "v1") == single.digest
        assert manifest_digest(offline, index.repository, "stable") == index.digest
        skopeo_copy(offline, f"{single.repository}:v1", tmp_path / "pull-single")
        verify_dir_copy(tmp_path / "pull-single", single)
        skopeo_copy(offline, f"{index.repository}:stable", tmp_path / "pull-index")
        verify_dir_copy(tmp_path / "pull-index", index)
        for child in index.children:
            assert manifest_digest(offline, index.repository, child.digest) == child.digest
        stats = offline.stats()
        assert stats["blob_misses"] == 0
    finally:
        offline.stop()
    # And a server started afterwards serves them too.
    offline.start()
    try:
        assert manifest_digest(offline, index.repository, "stable") == index.digest
        skopeo_copy(offline, f"{single.repository}:v1", tmp_path / "pull-after-restart")
        verify_dir_copy(tmp_path / "pull-after-restart", single)
    finally:
        offline.stop()


def test_export_then_import_round_trips(mirror: MirrorProcess, images: dict[str, Image], tmp_path: Path) -> None:
    demo, oci, index = images["demo"], images["oci"], images["index"]
    for image in (demo, oci, index):  # of the OCI index, skopeo pulls linux/amd64 only
        skopeo_copy(mirror, f"{image.repository}:latest", tmp_path / f"warm-{image.repository.replace('/', '-')}")
    mirror.wait_idle()
    archive = tmp_path / "x.tar"
    config = str(mirror.root / "config.toml")
    result = mirror_cli(
        "export", "demo", "ocidemo:latest", "docker.io/library/ociindex", "-o", str(archive), "--config", config
    )
    assert result.returncode == 0, result.stderr

    with tarfile.open(archive) as tar:
        assert json.loads(tar.extractfile("oci-layout").read()) == {"imageLayoutVersion": "1.0.0"}  # type: ignore[union-attr]
        layout_index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
        # Exact manifests: the Docker one stays a Docker manifest, byte for byte.
        assert tar.extractfile(f"blobs/sha256/{demo.digest[7:]}").read() == demo.manifest  # type: ignore[union-attr]
    refs = {m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"] for m in layout_index["manifests"]}
    assert refs == {
        "docker.io/library/demo:latest": demo.digest,
        "docker.io/library/ocidemo:latest": oci.digest,
        "docker.io/library/ociindex:latest": index.digest,
    }

    # skopeo 1.9 reads only OCI-typed entries of an index.json; those are the ones it checks here.
    info = json.loads(skopeo("inspect", f"oci-archive:{archive}:docker.io/library/ocidemo:latest").stdout)
    assert info["Digest"] == oci.digest
    assert len(info["Layers"]) == 2
    skopeo("copy", f"oci-archive:{archive}:docker.io/library/ocidemo:latest", f"dir:{tmp_path / 'oci-archive'}")
    verify_dir_copy(tmp_path / "oci-archive", oci)
    raw = skopeo("inspect", "--raw", f"oci-archive:{archive}:docker.io/library/ociindex:latest").stdout
    assert "sha256:" + hashlib.sha256(raw.encode()).hexdigest() == index.digest
    skopeo("copy", f"oci-archive:{archive}:docker.io/library/ociindex:latest", f"dir:{tmp_path / 'index-archive'}")
    verify_dir_copy(tmp_path / "index-archive", index.children[0])

    other = offline_mirror(tmp_path / "other")
    result = mirror_cli("import", str(archive), "--config", str(other.root / "config.toml"))
    assert result.returncode == 0, result.stderr
    assert "linux/arm64" in result.stderr  # the child that was never pulled is named as absent
    arm64 = index.children[1]
    assert arm64.digest[7:] not in cached_blobs(other.cache_dir)
    assert cached_blobs(other.cache_dir) == cached_blobs(mirror.cache_dir)
    other.start()
    try:
        for image in (demo, oci, index):
            assert manifest_digest(other, image.repository, "latest") == image.digest
        skopeo_copy(other, "demo:latest", tmp_path / "again-demo")
        verify_dir_copy(tmp_path / "again-demo", demo)
        skopeo_copy(other, "ociindex:latest", tmp_path / "again-index")
        verify_dir_copy(tmp_path / "again-index", index.children[0])
    finally:
        other.stop()

    # Exported again from the imported cache: the same bytes.
    again = tmp_path / "again.tar"
    other_config = str(other.root / "config.toml")
    result = mirror_cli("export", "demo", "ocidemo", "ociindex", "-o", str(again), "--config", other_config)
    assert result.returncode == 0, result.stderr
    assert again.read_bytes() == archive.read_bytes()


def test_export_names_what_is_not_cached(mirror: MirrorProcess, images: dict[str, Image], tmp_path: Path) -> None:
    skopeo_copy(mirror, "multi:latest", tmp_path / "warm")
    mirror.wait_idle()
    config = str(mirror.root / "config.toml")
    out = tmp_path / "x.tar"
    result = mirror_cli("export", "multi:latest", "nothere:1.0", "-o", str(out), "--config", config)
    assert result.returncode == 1
    assert "docker.io/library/nothere:1.0: not cached" in result.stderr
    assert not out.exists() and list(tmp_path.glob(".x.tar*")) == []
    result = mirror_cli("export", "multi:latest", "--platform", "linux/arm64", "-o", str(out), "--config", config)
    assert result.returncode == 1
    assert f"docker.io/library/multi:latest (linux/arm64): manifest {images['list'].children[1].digest}" in (
        result.stderr
    )
    result = mirror_cli("export", "multi:latest", "--platform", "linux/amd64", "-o", str(out), "--config", config)
    assert result.returncode == 0, result.stderr


def test_a_corrupted_archive_is_rejected_whole(registry: Registry, images: dict[str, Image], tmp_path: Path) -> None:
    source = registry.url.removeprefix("http://")
    archive = tmp_path / "a.tar"
    skopeo(
        "copy",
        "--all",
        "--src-tls-verify=false",
        f"docker://{source}/{images['index'].repository}:latest",
        f"oci-archive:{archive}:docker.io/{images['index'].repository}:latest",
    )
    # Flip one byte in the middle of the largest blob: a layer.
    with tarfile.open(archive) as tar:
        layer = max((m for m in tar.getmembers() if m.name.startswith("blobs/")), key=lambda m: m.size)
    with open(archive, "r+b") as file:
        file.seek(layer.offset_data + layer.size // 2)
        byte = file.read(1)
        file.seek(-1, 1)
        file.write(bytes([byte[0] ^ 0xFF]))

    target = offline_mirror(tmp_path / "target")
    result = mirror_cli("import", str(archive), "--config", str(target.root / "config.toml"))
    assert result.returncode != 0
    assert "does not match its digest" in result.stderr and layer.name.split("/")[-1] in result.stderr
    assert "nothing was imported" in result.stderr
    assert cached_blobs(target.cache_dir) == set()
    assert list((target.cache_dir / "tmp").glob("*")) == [] if (target.cache_dir / "tmp").exists() else True
    listed = mirror_cli("ls", "--json", "--config", str(target.root / "config.toml"))
    if listed.returncode == 1:  # the import left no cache behind at all
        assert listed.stderr.startswith("mirror ls: no cache at")
    else:
        assert json.loads(listed.stdout) == []
