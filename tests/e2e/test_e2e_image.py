"""The mirror's container image: built from the Containerfile with podman, run, and pulled through.

`scripts/image build --offline` builds it with no network at all, from the root filesystem and the
wheelhouse that `scripts/image prepare` made before scripts/e2e entered the namespace. The build and
the container use private podman storage, as the `Podman` client does. The container runs as README
says (`--network host`, the ulimits, the config mounted read-only, the cache a volume) in front of a
distribution registry of this module's own, and skopeo pulls through it: each blob leaves the registry
once, and the warm pull comes from the container's cache alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_parts import LAYER_SIZE, Podman, Skopeo, private_mounts, run
from support import Image, Pusher, Registry, free_port
from tools import tool

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
TAG = "localhost/mirror:e2e"
VOLUME = "mirror-e2e-cache"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")  # what scripts/image passes as the build secret
BUILD_TIMEOUT = 900
# podman's default limits exceed this machine's hard limits; the host's network needs no bridge.
RUN_FLAGS = ["--ulimit", "nofile=16384:16384", "--ulimit", "nproc=4096:4096", "--network", "host"]
PEM = re.compile(rb"-----BEGIN CERTIFICATE-----\s+(.+?)-----END CERTIFICATE-----", re.DOTALL)


@dataclass
class Container:
    podman: Podman
    id: str
    url: str

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = httpx.get(f"{self.url}/stats", timeout=10).json()
        return stats

    def logs(self) -> str:
        result = self.podman.podman("logs", self.id, check=False, timeout=30)
        return result.stdout[-4000:] + result.stderr[-4000:]

    def wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"the container did not answer /healthz in {timeout}s:\n{self.logs()}")

    def wait_idle(self, timeout: float = 20) -> None:
        """No download in flight: the client has the last byte before the mirror's fsync."""
        deadline = time.monotonic() + timeout
        while self.stats()["inflight_downloads"]:
            assert time.monotonic() < deadline, "downloads still in flight"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    """Private podman storage with the image built in it, offline."""
    root = tmp_path_factory.mktemp("image")
    podman = Podman(root / "podman", "http://127.0.0.1:5000")  # its registries.conf is not used here
    # runc keeps its state in /run/runc: give it a private /run (the same directory for every command).
    (root / "podman" / "hostrun").mkdir()
    podman.binds.append((root / "podman" / "hostrun", "/run"))
    try:
        env = {**podman.env, "PODMAN": " ".join([tool("podman"), *podman.global_flags()])}
        argv = [str(REPO / "scripts" / "image"), "build", "--offline", "--tag", TAG]
        started = time.monotonic()
        # With podman's private binds (/dev/shm, /run), as Podman.podman() runs podman itself.
        run(private_mounts(podman.binds, argv), env=env, timeout=BUILD_TIMEOUT)
        print(f"image built offline in {time.monotonic() - started:.0f}s")
        yield podman
    finally:
        podman.stop()


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[tuple[Registry, Image]]:
    registry = Registry(tmp_path / "registry").start()
    try:
        with Pusher(registry.url) as pusher:
            image = pusher.image("library/served", "latest", [LAYER_SIZE, 4096], seed=7100)
        yield registry, image
    finally:
        registry.stop()


@pytest.fixture
def container(podman: Podman, upstream: tuple[Registry, Image], tmp_path: Path) -> Iterator[Container]:
    """The image running as README says, its mirror in front of the registry."""
    registry, _ = upstream
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(
        f'[server]\nlisten = "127.0.0.1:{port}"\ndrain_timeout = "2s"\n\n'
        f'[upstreams."docker.io"]\nurl = "{registry.url}"\n'
    )
    config.chmod(0o644)
    container_id = podman.podman(
        "run", "--rm", "-d", *RUN_FLAGS,
        "-v", f"{config}:/etc/mirror/config.toml:ro",
        "-v", f"{VOLUME}:/var/lib/mirror",
        TAG,
    ).stdout.strip()  # fmt: skip
    running = Container(podman, container_id, f"http://127.0.0.1:{port}")
    try:
        running.wait_healthy()
        yield running
    finally:
        podman.podman("stop", "--time", "10", container_id, check=False, timeout=60)
        podman.podman("rm", "--force", "--ignore", container_id, check=False, timeout=60)
        podman.podman("volume", "rm", "--force", VOLUME, check=False, timeout=60)


def test_the_image_serves_a_pull(container: Container, upstream: tuple[Registry, Image], tmp_path: Path) -> None:
    registry, image = upstream
    skopeo = Skopeo(tmp_path / "skopeo", container.url)
    reference = f"{container.url.removeprefix('http://')}/library/served:latest"

    for attempt in ("cold", "warm"):
        mark = registry.mark()
        out = tmp_path / attempt
        skopeo.skopeo("copy", "--retry-times", "0", "--src-tls-verify=false", f"docker://{reference}", f"dir:{out}")
        container.wait_idle()
        # What skopeo wrote is the image, byte for byte.
        assert "sha256:" + hashlib.sha256((out / "manifest.json").read_bytes()).hexdigest() == image.digest
        for digest, data in image.blobs.items():
            assert (out / digest.split(":")[1]).read_bytes() == data, digest
        blob_gets = [path for method, path, _ in registry.requests_since(mark) if method == "GET" and "/blobs/" in path]
        if attempt == "cold":
            assert sorted(path.rsplit("/", 1)[1] for path in blob_gets) == sorted(image.blobs)
        else:
            assert blob_gets == []

    # The blobs are in the container's cache, on its volume (the manifest too: it is stored by digest).
    stats = container.stats()
    assert stats["cached_blobs"] == len(image.blobs) + 1, stats
    assert stats["cached_bytes"] == sum(map(len, image.blobs.values())) + len(image.manifest), stats
    assert stats["blob_misses"] == len(image.blobs), stats
    assert stats["blob_hits"] >= len(image.blobs), stats
    volume = Path(container.podman.podman("volume", "inspect", "--format", "{{.Mountpoint}}", VOLUME).stdout.strip())
    on_volume = {path.name for path in volume.rglob("*") if path.is_file()}
    assert {digest.split(":")[1] for digest in image.blobs} <= on_volume, sorted(on_volume)

    # The mirror runs as the image's user, not root.
    assert container.podman.podman("exec", container.id, "id", "-u").stdout.strip() == "10001"
    user = container.podman.podman("image", "inspect", "--format", "{{.Config.User}}", TAG).stdout.strip()
    assert user == "10001:10001"


def test_mirror_is_the_entrypoint(podman: Podman) -> None:
    """Other commands than serve run as README says: `podman run --rm IMAGE client-config ...`."""
    url = "http://mirror.lan:5000"
    result = podman.podman("run", "--rm", *RUN_FLAGS, TAG, "client-config", "docker", "--url", url)
    assert json.loads(result.stdout)["registry-mirrors"] == [url]


def test_the_build_secret_is_in_no_layer(podman: Podman, tmp_path: Path) -> None:
    """pip trusted the machine's CA bundle through a build secret: neither it nor its certificates stay."""
    checks = "test ! -e /run/secrets/ca && test ! -e /opt/mirror/bin/pip && test ! -e /etc/pip.conf"
    podman.podman("run", "--rm", *RUN_FLAGS, "--entrypoint", "sh", TAG, "-c", checks)

    saved = tmp_path / "saved"
    podman.podman("save", "--format", "oci-dir", "--output", str(saved), TAG, timeout=300)
    try:
        pem_files = scan_layers(saved, hashlib.sha256(CA_BUNDLE.read_bytes()).hexdigest())
    finally:
        shutil.rmtree(saved)
    # The certificates this machine added to Debian's (a TLS-inspecting proxy's CA) are nowhere.
    debian = {body for path in Path("/usr/share/ca-certificates").rglob("*.crt") for body in pems(path.read_bytes())}
    added = [body for body in pems(CA_BUNDLE.read_bytes()) if body not in debian]
    print(f"{len(added)} certificates of the build secret are not Debian's; found in none of {len(pem_files)} files")
    for name, data in pem_files.items():
        flat = re.sub(rb"\s", b"", data)
        assert not [body for body in added if body in flat], f"{name} holds a certificate of the build secret"


def pems(data: bytes) -> list[bytes]:
    """The certificates of a PEM file, each as its base64 without whitespace."""
    return [re.sub(rb"\s", b"", body) for body in PEM.findall(data)]


def scan_layers(layout: Path, secret_digest: str) -> dict[str, bytes]:
    """Check every file of every layer of an OCI layout against the secret; returns the PEM files."""
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads(blob_path(layout, index["manifests"][0]["digest"]).read_bytes())
    pem_files: dict[str, bytes] = {}
    for layer in manifest["layers"]:
        with tarfile.open(blob_path(layout, layer["digest"])) as tar:
            for member in tar:
                name = os.path.normpath(member.name).lstrip("/")
                assert not name.startswith("run/secrets"), f"{name} in layer {layer['digest']}"
                extracted = tar.extractfile(member) if member.isfile() else None
                if extracted is None:
                    continue
                data = extracted.read()
                assert hashlib.sha256(data).hexdigest() != secret_digest, f"{name} is the build secret"
                if b"BEGIN CERTIFICATE" in data:
                    pem_files[name] = data
    return pem_files


def blob_path(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.split(":")[1]
