"""Real parts for the tests: the CNCF distribution registry, seeded images, a mirror process."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import httpx
from tools import tool

from mirror.cache.layout import CacheLayout
from mirror.registry.reference import parse_digest

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
ALL_MANIFESTS = [DOCKER_MANIFEST, DOCKER_LIST, OCI_MANIFEST, OCI_INDEX]

_ACCESS_RE = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d{3})')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def wait_for_http(url: str, process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """Wait until `url` answers at all (any status)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}")
        try:
            httpx.get(url, timeout=1.0, verify=False)  # a readiness probe: any answer will do
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up in {timeout}s")


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Stop one process by its PID: SIGTERM, then SIGKILL."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_server(argv: list[str], log: Path, port: int) -> subprocess.Popen[bytes]:
    """Start a server in the foreground and wait for its port; stopped by PID if it never comes up."""
    with open(log, "ab") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port("127.0.0.1", port, process)
    except BaseException:
        stop_process(process)
        raise
    return process


def wait_for_port(host: str, port: int, process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}")
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{host}:{port} did not come up in {timeout}s")


class ByPid:
    """A server the tests started as a child process, stopped (or killed) by its PID."""

    process: subprocess.Popen[bytes] | None
    stop_timeout = 10.0  # seconds from SIGTERM to SIGKILL

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, self.stop_timeout)
            self.process = None

    def kill(self) -> None:
        """SIGKILL: gone mid-run, with no goodbye to its clients."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@dataclass
class Registry(ByPid):
    """A real `docker-registry` (CNCF distribution) on a loopback port; its access log counts requests."""

    root: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    extra_config: str = ""
    host: str = "127.0.0.1"
    tls: tuple[Path, Path] | None = None  # certificate and key: serve https
    headers: dict[str, str] = field(default_factory=dict)  # added to every response

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.root / "access.log"

    def start(self) -> Registry:
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: error\n  accesslog:\n    disabled: false\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.root / 'data'}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.host}:{self.port}\n  secret: test-secret\n"
            + (f"  tls:\n    certificate: {self.tls[0]}\n    key: {self.tls[1]}\n" if self.tls else "")
            + ("  headers:\n" if self.headers else "")
            + "".join(f"    {name}: [{json.dumps(value)}]\n" for name, value in self.headers.items())
            + self.extra_config
        )
        with open(self.log_path, "ab") as out, open(self.root / "registry.err", "ab") as err:
            self.process = subprocess.Popen([tool("docker-registry"), "serve", str(config)], stdout=out, stderr=err)
        try:
            wait_for_http(f"{self.url}/v2/", self.process)
        except BaseException:
            self.stop()
            raise
        return self

    def requests(self) -> list[tuple[str, str, int]]:
        """(method, path, status) for every request the registry has logged so far."""
        if not self.log_path.exists():
            return []
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            match = _ACCESS_RE.search(line)
            if match:
                found.append((match["method"], match["path"], int(match["status"])))
        return found

    def client_addresses(self) -> list[str]:
        """The remote address of every request the registry has logged so far."""
        if not self.log_path.exists():
            return []
        lines = self.log_path.read_text(errors="replace").splitlines()
        return [line.split(" ", 1)[0] for line in lines if _ACCESS_RE.search(line)]

    def blob_gets(self) -> Counter[str]:
        """How many GETs each blob digest received."""
        return Counter(
            path.rsplit("/", 1)[1]
            for method, path, _ in self.requests()
            if method == "GET" and "/blobs/sha256:" in path
        )

    def mark(self) -> int:
        return len(self.requests())

    def requests_since(self, mark: int) -> list[tuple[str, str, int]]:
        return self.requests()[mark:]


# Images


def make_layer(size: int, seed: int) -> tuple[bytes, str]:
    """A gzip tar layer holding `size` random bytes; returns (compressed bytes, diff_id)."""
    content = random.Random(seed).randbytes(size)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(f"data/layer-{seed}.bin")
        info.size, info.mtime, info.mode = size, 1_700_000_000, 0o644
        tar.addfile(info, io.BytesIO(content))
    tar_bytes = raw.getvalue()
    return gzip.compress(tar_bytes, compresslevel=1, mtime=0), sha256(tar_bytes)


@dataclass
class Image:
    """A pushed image: its manifest and every blob it references, by digest."""

    repository: str
    tag: str
    manifest: bytes
    media_type: str
    blobs: dict[str, bytes]
    children: list[Image] = field(default_factory=list)

    @property
    def digest(self) -> str:
        return sha256(self.manifest)

    def all_blobs(self) -> dict[str, bytes]:
        blobs = dict(self.blobs)
        for child in self.children:
            blobs.update(child.all_blobs())
        return blobs


class Pusher:
    """Pushes images through the registry's v2 push API (monolithic uploads)."""

    def __init__(self, url: str) -> None:
        self.client = httpx.Client(base_url=url, timeout=60)

    def __enter__(self) -> Pusher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.client.close()

    def blob(self, repository: str, data: bytes) -> str:
        digest = sha256(data)
        if self.client.head(f"/v2/{repository}/blobs/{digest}").status_code == 200:
            return digest
        start = self.client.post(f"/v2/{repository}/blobs/uploads/")
        assert start.status_code == 202, start.text
        location = start.headers["location"]
        done = self.client.put(
            httpx.URL(location).copy_merge_params({"digest": digest}),
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert done.status_code == 201, done.text
        return digest

    def manifest(self, repository: str, reference: str, body: bytes, media_type: str) -> None:
        response = self.client.put(
            f"/v2/{repository}/manifests/{reference}", content=body, headers={"Content-Type": media_type}
        )
        assert response.status_code == 201, response.text

    def image(
        self,
        repository: str,
        tag: str,
        layer_sizes: list[int],
        *,
        seed: int,
        oci: bool = False,
        platform: tuple[str, str] = ("linux", "amd64"),
    ) -> Image:
        layers = [make_layer(size, seed * 1000 + i) for i, size in enumerate(layer_sizes)]
        config = json.dumps(
            {
                "architecture": platform[1],
                "os": platform[0],
                "config": {"Cmd": ["/bin/sh"], "Env": [f"SEED={seed}"]},
                "rootfs": {"type": "layers", "diff_ids": [diff_id for _, diff_id in layers]},
                "history": [{"created_by": f"layer {i}"} for i in range(len(layers))],
            },
            sort_keys=True,
        ).encode()
        blobs = {sha256(config): config, **{sha256(data): data for data, _ in layers}}
        for data in blobs.values():
            self.blob(repository, data)
        manifest_type = OCI_MANIFEST if oci else DOCKER_MANIFEST
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": manifest_type,
                "config": {
                    "mediaType": OCI_CONFIG if oci else DOCKER_CONFIG,
                    "size": len(config),
                    "digest": sha256(config),
                },
                "layers": [
                    {"mediaType": OCI_LAYER if oci else DOCKER_LAYER, "size": len(data), "digest": sha256(data)}
                    for data, _ in layers
                ],
            },
            indent=3,
        ).encode()
        self.manifest(repository, tag, manifest, manifest_type)
        return Image(repository, tag, manifest, manifest_type, blobs)

    def index(self, repository: str, tag: str, children: list[Image], *, oci: bool) -> Image:
        index_type = OCI_INDEX if oci else DOCKER_LIST
        body = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": index_type,
                "manifests": [
                    {
                        "mediaType": child.media_type,
                        "size": len(child.manifest),
                        "digest": child.digest,
                        "platform": {
                            "architecture": json.loads(child.blobs[json.loads(child.manifest)["config"]["digest"]])[
                                "architecture"
                            ],
                            "os": "linux",
                        },
                    }
                    for child in children
                ],
            },
            indent=3,
        ).encode()
        self.manifest(repository, tag, body, index_type)
        return Image(repository, tag, body, index_type, {}, children)


def seed_standard_images(url: str, layer_size: int = 256 * 1024) -> dict[str, Image]:
    """The images every suite needs: schema2, OCI, a Docker manifest list and an OCI index."""
    with Pusher(url) as pusher:
        return _seed(pusher, layer_size)


def _seed(pusher: Pusher, layer_size: int) -> dict[str, Image]:
    images = {
        "demo": pusher.image("library/demo", "latest", [layer_size, layer_size // 2, 4096], seed=1),
        "oci": pusher.image("library/ocidemo", "latest", [layer_size, 8192], seed=2, oci=True),
    }
    amd64 = pusher.image("library/multi", "amd64", [layer_size, 4096], seed=3)
    arm64 = pusher.image("library/multi", "arm64", [layer_size, 4096], seed=4, platform=("linux", "arm64"))
    images["list"] = pusher.index("library/multi", "latest", [amd64, arm64], oci=False)
    oci_amd64 = pusher.image("library/ociindex", "amd64", [layer_size, 4096], seed=5, oci=True)
    oci_arm64 = pusher.image(
        "library/ociindex", "arm64", [layer_size, 4096], seed=6, oci=True, platform=("linux", "arm64")
    )
    images["index"] = pusher.index("library/ociindex", "latest", [oci_amd64, oci_arm64], oci=True)
    return images


# The mirror under test


TEST_ADMIN = ("test-admin", "test-admin-pass")


@dataclass
class MirrorProcess(ByPid):
    """`mirror serve` as a real subprocess on a loopback port."""

    root: Path
    upstreams: dict[str, str]
    extra_config: str = ""
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    credentials: dict[str, tuple[str, str]] = field(default_factory=dict)
    server_config: str = ""  # more [server] keys, e.g. tls_cert and tls_key
    upstream_config: str = ""  # more keys for every upstream, e.g. read_timeout
    scheme: str = "http"
    upstream_keys: dict[str, str] = field(default_factory=dict)  # more keys for one upstream, by name
    env: dict[str, str] = field(default_factory=dict)  # laid over this process's environment
    wrapper: list[str] = field(default_factory=list)  # a command that execs the mirror (same PID)
    args: list[str] = field(default_factory=list)  # more `mirror serve` flags, e.g. --offline
    # Short, so that stop() (SIGTERM) does not wait out the default 30 s drain for downloads a
    # test left in flight; the drain's own tests set it.
    drain_timeout: str = "2s"
    listen_host: str = "127.0.0.1"  # "[::]": both families
    # The login stats() sends. With client logins or rules, /stats needs an admin: a config with
    # [auth] and no admin_htpasswd of its own is given one for this login (write_config).
    admin: tuple[str, str] | None = None
    auto_admin: bool = True  # False: leave a config without admin_htpasswd as it is

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def log_path(self) -> Path:
        return self.root / "mirror.log"

    def write_config(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "config.toml"
        text = f'[server]\nlisten = "{self.listen_host}:{self.port}"\ndrain_timeout = "{self.drain_timeout}"\n'
        text += f"{self.server_config}\n"
        text += f'[cache]\ndirectory = "{self.cache_dir}"\n' + self._with_admin(self.extra_config) + "\n"
        for name, url in self.upstreams.items():
            text += f'[upstreams."{name}"]\nurl = "{url}"\n{self.upstream_config}\n'
            text += self.upstream_keys.get(name, "") + "\n"
            if name in self.credentials:
                username, password = self.credentials[name]
                text += f'username = "{username}"\npassword = "{password}"\n'
        config.write_text(text)
        return config

    def _with_admin(self, extra: str) -> str:
        if not self.auto_admin or "admin_htpasswd" in extra or ("[auth]\n" not in extra and "[[auth." not in extra):
            return extra
        self.admin = TEST_ADMIN
        user, password = TEST_ADMIN
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
        (self.root / "admins.htpasswd").write_text(f"{user}:{hashed}\n")
        line = f'admin_htpasswd = "{self.root / "admins.htpasswd"}"\n'
        if "[auth]\n" in extra:
            return extra.replace("[auth]\n", f"[auth]\n{line}", 1)
        return extra.replace("[[auth.", f"[auth]\n{line}[[auth.", 1)  # rules alone: the table before them

    def start(self) -> MirrorProcess:
        config = self.write_config()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [*self.wrapper, sys.executable, "-m", "mirror", "serve", "--config", str(config), *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            )
        try:
            wait_for_http(f"{self.url}/healthz", self.process)
        except BaseException:
            self.stop()  # the caller has no handle on a process whose start failed
            raise
        return self

    def stats(self) -> dict[str, Any]:
        """/stats: counters, and `upstreams` with each upstream's own counters and quota."""
        stats: dict[str, Any] = httpx.get(f"{self.url}/stats", auth=self.admin).json()
        return stats

    def wait_indexed(self, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until the start-up scan has indexed the cache and enforced max_size; the stats then."""
        deadline = time.monotonic() + timeout
        while not (stats := self.stats())["blob_index_ready"]:
            if time.monotonic() > deadline:
                raise AssertionError("the start-up scan did not finish")
            time.sleep(0.02)
        return stats

    def wait_idle(self, timeout: float = 20.0) -> None:
        """Wait until no download is in flight: clients get the last byte before the fsync."""
        deadline = time.monotonic() + timeout
        while self.stats()["inflight_downloads"]:
            if time.monotonic() > deadline:
                raise AssertionError("downloads still in flight")
            time.sleep(0.01)

    def blob_path(self, digest: str) -> Path:
        return CacheLayout(self.cache_dir).blob_path(parse_digest(digest))
