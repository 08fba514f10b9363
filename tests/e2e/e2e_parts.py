"""Real clients for the end-to-end suite: Docker Engine, containerd, podman and skopeo.

Every daemon and client keeps to its own directory under pytest's tmp_path: its own data,
state, sockets and config, and a private mount namespace (`unshare --mount`) so that any
mount it makes dies with it. Every process is stopped by its PID. Every command has a
timeout, and none runs unless this process is in a network namespace with only `lo`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from support import Image, MirrorProcess, Pusher, Registry, stop_process
from token_upstream import StaticCDN, TokenIssuer
from tools import tool

MIRROR_CLI = str(Path(sys.executable).parent / "mirror")
KINDS = ("schema2", "oci", "list", "index")
CLIENTS = ("docker", "containerd", "podman", "skopeo")
LAYER_SIZE = 512 * 1024
PULL_TIMEOUT = 180


class NotIsolated(RuntimeError):
    pass


def assert_loopback_only() -> None:
    """Refuse to go on unless the only network interface here is loopback."""
    names = [name for _, name in socket.if_nameindex()]
    if names != ["lo"]:
        raise NotIsolated(
            f"network interfaces {names}: the e2e suite runs only in a loopback-only network namespace "
            "(use scripts/e2e)"
        )


def run(
    argv: list[str], *, timeout: float = PULL_TIMEOUT, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    assert_loopback_only()
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} exited with {result.returncode}\nstdout: {result.stdout[-4000:]}\n"
            f"stderr: {result.stderr[-4000:]}"
        )
    return result


def private_mounts(binds: list[tuple[Path, str]], argv: list[str]) -> list[str]:
    """`argv` in its own mount namespace, with private directories bound over host paths."""
    script = "set -e\n"
    for index in range(len(binds)):
        script += f'mount -n --bind "${index + 1}" "${index + 1 + len(binds)}"\n'
    script += f'shift {2 * len(binds)}\nexec "$@"\n'
    sources = [str(source) for source, _ in binds]
    targets = [target for _, target in binds]
    return [
        tool("unshare"),
        "--mount",
        "--propagation",
        "slave",
        tool("sh"),
        "-c",
        script,
        "sh",
        *sources,
        *targets,
        *argv,
    ]


def existing_parent(path: str) -> str:
    """`path`, or its nearest existing parent (a bind mount needs an existing target)."""
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def wait_until(check: object, what: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{tail(log)}")
        if check():
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not come up in {timeout}s:\n{tail(log)}")


def tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def client_config(client: str, mirror_url: str, *extra: str) -> str:
    """Client settings exactly as README tells users to make them: `mirror client-config`."""
    argv = [MIRROR_CLI, "client-config", client, "--url", mirror_url, "--registry", "docker.io"]
    argv += ["--registry", "ghcr.io", *extra]
    return run(argv, timeout=30).stdout


# Upstreams and the mirror


@dataclass
class Upstream:
    """One token-authenticated distribution registry with its issuer and CDN, and its seeded images."""

    name: str
    registry: Registry
    issuer: TokenIssuer
    cdn: StaticCDN
    images: dict[str, dict[str, Image]] = field(default_factory=dict)  # client -> kind -> image

    def stop(self) -> None:
        self.registry.stop()
        self.cdn.stop()
        self.issuer.stop()

    def blobs_served(self) -> tuple[Counter[str], Counter[str]]:
        """Per digest: registry blob GETs that were answered (not 401), and CDN blob GETs."""
        registry = Counter(
            path.rsplit("/", 1)[1]
            for method, path, status in self.registry.requests()
            if method == "GET" and "/blobs/sha256:" in path and status != 401
        )
        cdn = Counter("sha256:" + hex_digest for hex_digest in self.cdn.blob_gets())
        return registry, cdn


def seed_kinds(pusher: Pusher, names: dict[str, tuple[str, str]], seed: int) -> dict[str, Image]:
    """One image of each kind, with blobs of their own (no layer is shared with another image)."""
    images = {}
    repo, tag = names["schema2"]
    images["schema2"] = pusher.image(repo, tag, [LAYER_SIZE, 4096], seed=seed)
    repo, tag = names["oci"]
    images["oci"] = pusher.image(repo, tag, [LAYER_SIZE, 8192], seed=seed + 1, oci=True)
    for kind, oci, offset in (("list", False, 2), ("index", True, 4)):
        repo, tag = names[kind]
        children = [
            pusher.image(repo, f"{tag}-amd64", [LAYER_SIZE, 4096], seed=seed + offset, oci=oci),
            pusher.image(
                repo, f"{tag}-arm64", [LAYER_SIZE, 4096], seed=seed + offset + 1, oci=oci, platform=("linux", "arm64")
            ),
        ]
        images[kind] = pusher.index(repo, tag, children, oci=oci)
    return images


def amd64(image: Image) -> Image:
    """What a linux/amd64 client pulls: the image itself, or the amd64 entry of an index."""
    return image.children[0] if image.children else image


def config_digest(image: Image) -> str:
    digest: str = json.loads(amd64(image).manifest)["config"]["digest"]
    return digest


# Daemons


class Containerd:
    """A private containerd: own root, state, sockets and opt dir; no CRI; own mount namespace."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "c.sock"
        self.log = root / "containerd.log"
        self.process: subprocess.Popen[bytes] | None = None

    def write_config(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "config.toml"
        config.write_text(
            "version = 2\n"
            f'root = "{self.root / "root"}"\n'
            f'state = "{self.root / "state"}"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",'
            ' "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs",'
            ' "io.containerd.snapshotter.v1.devmapper"]\n'
            f'[grpc]\n  address = "{self.socket}"\n'
            f'[ttrpc]\n  address = "{self.socket}.ttrpc"\n'
            '[debug]\n  address = ""\n  level = "info"\n'
            '[metrics]\n  address = ""\n'
            f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{self.root / "opt"}"\n'
        )
        return config

    def start(self) -> Containerd:
        assert_loopback_only()
        config = self.write_config()
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [tool("unshare"), "--mount", "--propagation", "slave", tool("containerd"), "--config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        wait_until(self._ready, "containerd", self.process, self.log)
        return self

    def _ready(self) -> bool:
        if not self.socket.exists():
            return False
        return self.ctr("version", check=False).returncode == 0

    def ctr(self, *args: str, check: bool = True, timeout: float = PULL_TIMEOUT) -> subprocess.CompletedProcess[str]:
        return run(
            [tool("ctr"), "--address", str(self.socket), "--namespace", "mirror-e2e", *args],
            timeout=timeout,
            check=check,
        )

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, timeout=30.0)
            self.process = None
        shutil.rmtree(self.root / "root", ignore_errors=True)


class DockerEngine:
    """dockerd with daemon.json from `mirror client-config docker` plus private paths; its own containerd."""

    def __init__(self, root: Path, mirror_url: str) -> None:
        self.root = root
        self.mirror_url = mirror_url
        self.socket = root / "d.sock"
        self.log = root / "dockerd.log"
        self.containerd = Containerd(root / "ctd")
        self.process: subprocess.Popen[bytes] | None = None
        self.env = {**os.environ, "DOCKER_CONFIG": str(root / "cli")}
        self.env.pop("DOCKER_HOST", None)
        self.docker_cli = tool("docker")
        # dockerd always creates /run/docker/plugins: give it a private /run. Tests may add more binds.
        self.binds: list[tuple[Path, str]] = [(root / "run", "/run")]

    def daemon_json(self) -> dict[str, object]:
        config: dict[str, object] = json.loads(client_config("docker", self.mirror_url))
        config.update(
            {
                "data-root": str(self.root / "data"),
                "exec-root": str(self.root / "exec"),
                "pidfile": str(self.root / "dockerd.pid"),
                "hosts": [f"unix://{self.socket}"],
                "deprecated-key-path": str(self.root / "key.json"),
                "containerd": str(self.containerd.socket),
                "storage-driver": "vfs",
                "iptables": False,
                "ip6tables": False,
                "ip-forward": False,
                "ip-masq": False,
                "bridge": "none",
                "userland-proxy": False,
                "exec-opts": ["native.cgroupdriver=cgroupfs"],
                "max-concurrent-downloads": 3,
            }
        )
        return config

    def start(self) -> DockerEngine:
        assert_loopback_only()
        (self.root / "cli").mkdir(parents=True, exist_ok=True)
        (self.root / "run").mkdir(parents=True, exist_ok=True)
        self.containerd.start()
        config = self.root / "daemon.json"
        config.write_text(json.dumps(self.daemon_json(), indent=2))
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                private_mounts(self.binds, [tool("dockerd"), "--config-file", str(config)]),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        wait_until(
            lambda: self.socket.exists() and self.docker("version", check=False).returncode == 0,
            "dockerd",
            self.process,
            self.log,
        )
        return self

    def docker(self, *args: str, check: bool = True, timeout: float = PULL_TIMEOUT) -> subprocess.CompletedProcess[str]:
        return run([self.docker_cli, "-H", f"unix://{self.socket}", *args], env=self.env, timeout=timeout, check=check)

    def stop(self) -> None:
        try:
            if self.process is not None:
                stop_process(self.process, timeout=30.0)
                self.process = None
        finally:
            self.containerd.stop()
            shutil.rmtree(self.root / "data", ignore_errors=True)


class Podman:
    """Rootful podman with private storage (vfs), tmp, network config, events log and /dev/shm locks."""

    def __init__(self, root: Path, mirror_url: str) -> None:
        self.root = root
        for name in ("graph", "run", "tmp", "net", "shm", "home"):
            (root / name).mkdir(parents=True, exist_ok=True)
        registries = root / "registries.conf"
        registries.write_text('unqualified-search-registries = ["docker.io"]\n\n' + client_config("podman", mirror_url))
        storage = root / "storage.conf"
        storage.write_text(f'[storage]\ndriver = "vfs"\ngraphroot = "{root / "graph"}"\nrunroot = "{root / "run"}"\n')
        containers = root / "containers.conf"
        containers.write_text(
            "[engine]\n"
            f'tmp_dir = "{root / "tmp"}"\n'
            f'static_dir = "{root / "graph" / "libpod"}"\n'
            f'volume_path = "{root / "graph" / "volumes"}"\n'
            'events_logger = "file"\n'
            f'events_logfile_path = "{root / "tmp" / "events.log"}"\n'
            'cgroup_manager = "cgroupfs"\n'
            "[network]\n"
            f'network_config_dir = "{root / "net"}"\n'
        )
        self.policy = root / "policy.json"
        self.policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
        (root / "auth.json").write_text('{"auths": {}}')  # no credentials: only the mirror has them
        self.env = {
            **os.environ,
            "HOME": str(root / "home"),
            "CONTAINERS_REGISTRIES_CONF": str(registries),
            "CONTAINERS_STORAGE_CONF": str(storage),
            "CONTAINERS_CONF": str(containers),
            "REGISTRY_AUTH_FILE": str(root / "auth.json"),
            "TMPDIR": str(root / "tmp"),
        }
        self.env.pop("XDG_RUNTIME_DIR", None)
        # Its SHM lock file would go to the host's /dev/shm: give it a private one. Tests may add more binds.
        self.binds: list[tuple[Path, str]] = [(root / "shm", "/dev/shm")]
        self.ran_containers = False  # then stop() removes them

    def global_flags(self) -> list[str]:
        """podman's flags for this private storage (scripts/image is given them too)."""
        return [
            "--root", str(self.root / "graph"),
            "--runroot", str(self.root / "run"),
            "--storage-driver", "vfs",
            "--tmpdir", str(self.root / "tmp"),
            "--cgroup-manager", "cgroupfs",
            "--events-backend", "file",
            "--network-config-dir", str(self.root / "net"),
            # runc, not crun: podman prefers crun when both are installed (a machine where the main
            # suite's podman came first has both), and crun refuses the hybrid cgroup layout here.
            "--runtime", tool("runc"),
        ]  # fmt: skip

    def podman(self, *args: str, check: bool = True, timeout: float = PULL_TIMEOUT) -> subprocess.CompletedProcess[str]:
        self.ran_containers = self.ran_containers or "run" in args[:1]
        argv = [tool("podman"), *self.global_flags(), *args]
        return run(private_mounts(self.binds, argv), env=self.env, timeout=timeout, check=check)

    def stop(self) -> None:
        # No daemon, but a container may still run (a test that failed after `podman run -d`):
        # stopped by podman, which knows its PIDs; then storage is vfs directories under root.
        if self.ran_containers:
            self.podman("rm", "--all", "--force", "--time", "5", check=False, timeout=60)
        shutil.rmtree(self.root / "graph", ignore_errors=True)


class Skopeo:
    """skopeo with its own policy, registries.conf (the podman one from client-config) and blob-info cache."""

    def __init__(self, root: Path, mirror_url: str) -> None:
        self.root = root
        for name in ("home", "tmp", "varlib", "registries.d"):
            (root / name).mkdir(parents=True, exist_ok=True)
        self.registries = root / "registries.conf"
        self.registries.write_text(client_config("podman", mirror_url))
        self.policy = root / "policy.json"
        self.policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
        (root / "auth.json").write_text('{"auths": {}}')  # no credentials: only the mirror has them
        self.env = {
            **os.environ,
            "HOME": str(root / "home"),
            "TMPDIR": str(root / "tmp"),
            "REGISTRY_AUTH_FILE": str(root / "auth.json"),
        }
        # As root, skopeo keeps its blob-info cache in /var/lib/containers/cache: keep it private.
        self.binds = [(root / "varlib", existing_parent("/var/lib/containers"))]

    def skopeo(self, *args: str, check: bool = True, timeout: float = PULL_TIMEOUT) -> subprocess.CompletedProcess[str]:
        argv = [
            tool("skopeo"),
            "--policy", str(self.policy),
            "--registries-conf", str(self.registries),
            "--registries.d", str(self.root / "registries.d"),
            "--override-os", "linux",
            "--override-arch", "amd64",
            *args,
        ]  # fmt: skip
        return run(private_mounts(self.binds, argv), env=self.env, timeout=timeout, check=check)


# Accounting: what each pull cost upstream


@dataclass
class Cost:
    registry_requests: int = 0
    registry_blob_gets: int = 0
    cdn_blob_gets: int = 0
    token_requests: int = 0
    served: set[str] = field(default_factory=set)  # digests the upstreams sent bytes of
    registry_log: list[tuple[str, str, int]] = field(default_factory=list)
    mirror: dict[str, int] = field(default_factory=dict)


@dataclass
class Row:
    client: str
    registry: str
    kind: str
    reference: str
    cold: Cost
    warm: Cost


RESULTS: list[Row] = []


@contextmanager
def measure(upstreams: list[Upstream], mirror: MirrorProcess) -> Iterator[Cost]:
    """Count what the upstreams (registry, CDN, token issuer) and the mirror saw during the block."""
    marks = [(u.registry.mark(), len(u.cdn.requests), len(u.issuer.requests)) for u in upstreams]
    stats_before = mirror.stats()
    cost = Cost()
    yield cost
    for upstream, (registry_mark, cdn_mark, issuer_mark) in zip(upstreams, marks, strict=True):
        requests = upstream.registry.requests_since(registry_mark)
        blob_gets = [
            path.rsplit("/", 1)[1]
            for method, path, status in requests
            if method == "GET" and "/blobs/sha256:" in path and status != 401
        ]
        cdn_gets = [
            "sha256:" + r.path.split("/")[-2]
            for r in upstream.cdn.requests[cdn_mark:]
            if r.method == "GET" and r.path.endswith("/data")
        ]
        cost.registry_requests += len(requests)
        cost.registry_blob_gets += len(blob_gets)
        cost.cdn_blob_gets += len(cdn_gets)
        cost.token_requests += len(upstream.issuer.requests) - issuer_mark
        cost.served.update(blob_gets)
        cost.served.update(cdn_gets)
        cost.registry_log.extend(requests)
    stats_after = mirror.stats()
    cost.mirror = {
        key: stats_after[key] - value
        for key, value in stats_before.items()
        if isinstance(value, int) and key != "uptime_seconds"
    }


SHARED: list[tuple[str, str, Cost]] = []  # (client, reference, cost) of the image every client pulls


def results_table() -> str:
    lines = [
        "Per client pull; upstream = registry (+ its CDN, + its token issuer). Blob GETs at the registry are",
        "307 redirects to the CDN. Cold = first pull by any client; warm = same client again after removing it.",
        "",
        "| client | registry | kind | cold: registry requests | cold: registry blob GETs | cold: CDN blob GETs "
        "| cold: token requests | warm: registry requests | warm: registry blob GETs | warm: CDN blob GETs "
        "| warm: token requests | client→mirror requests cold/warm | mirror blob misses cold / hits warm |",
        "|" + "---|" * 13,
    ]
    for row in RESULTS:
        cold, warm = row.cold, row.warm
        lines.append(
            f"| {row.client} | {row.registry} | {row.kind} "
            f"| {cold.registry_requests} | {cold.registry_blob_gets} | {cold.cdn_blob_gets} | {cold.token_requests} "
            f"| {warm.registry_requests} | {warm.registry_blob_gets} | {warm.cdn_blob_gets} | {warm.token_requests} "
            f"| {cold.mirror.get('requests', 0)} / {warm.mirror.get('requests', 0)} "
            f"| {cold.mirror.get('blob_misses', 0)} / {warm.mirror.get('blob_hits', 0)} |"
        )
    if SHARED:
        lines += [
            "",
            "Shared image docker.io/library/demo:latest, pulled by each client in turn (after Docker's own pulls):",
            "",
            "| client | reference | registry requests | registry blob GETs | CDN blob GETs | token requests "
            "| client→mirror requests | mirror blob hits / misses |",
            "|" + "---|" * 8,
        ]
        for client, reference, cost in SHARED:
            lines.append(
                f"| {client} | `{reference}` | {cost.registry_requests} | {cost.registry_blob_gets} "
                f"| {cost.cdn_blob_gets} | {cost.token_requests} | {cost.mirror.get('requests', 0)} "
                f"| {cost.mirror.get('blob_hits', 0)} / {cost.mirror.get('blob_misses', 0)} |"
            )
    return "\n".join(lines) + "\n"


# The clients, behind one interface: reference, pull, remove, check


class Client:
    name = ""

    def reference(self, registry: str, image: Image) -> str:
        return f"{registry}/{image.repository}:{image.tag}"

    def pull(self, reference: str) -> None:
        raise NotImplementedError

    def remove(self, reference: str) -> None:
        raise NotImplementedError

    def check(self, reference: str, image: Image) -> None:
        """The pulled image is really there, and is the one the upstream holds."""
        raise NotImplementedError


class DockerClient(Client):
    """Docker Hub through `registry-mirrors`; other registries as <mirror>/<registry>/<image>."""

    name = "docker"

    def __init__(self, engine: DockerEngine, mirror: MirrorProcess) -> None:
        self.engine = engine
        self.mirror = mirror

    def reference(self, registry: str, image: Image) -> str:
        if registry == "docker.io":
            repository = image.repository.removeprefix("library/")
            return f"{repository}:{image.tag}"
        return f"127.0.0.1:{self.mirror.port}/{registry}/{image.repository}:{image.tag}"

    def pull(self, reference: str) -> None:
        self.engine.docker("pull", reference)

    def remove(self, reference: str) -> None:
        self.engine.docker("rmi", reference)

    def check(self, reference: str, image: Image) -> None:
        image_id = self.engine.docker("image", "inspect", "--format", "{{.Id}}", reference).stdout.strip()
        assert image_id == config_digest(image)


class ContainerdClient(Client):
    """`ctr images pull --hosts-dir` with the hosts.toml files `mirror client-config containerd` wrote."""

    name = "containerd"

    def __init__(self, containerd: Containerd, hosts_dir: Path) -> None:
        self.containerd = containerd
        self.hosts_dir = hosts_dir

    def pull(self, reference: str) -> None:
        self.containerd.ctr(
            "images", "pull", "--hosts-dir", str(self.hosts_dir), "--snapshotter", "native",
            "--platform", "linux/amd64", reference,
        )  # fmt: skip

    def remove(self, reference: str) -> None:
        # --sync waits for the garbage collector, so the content really is gone before the warm pull.
        self.containerd.ctr("images", "rm", "--sync", reference)
        # The garbage collector may still be running; an unpacked layer left behind would let the
        # next pull skip its download. Wait for this namespace to be empty, helping by hand.
        deadline = time.monotonic() + 30
        while True:
            snapshots = [line.split() for line in self.snapshots().splitlines()[1:]]
            content = self.containerd.ctr("content", "ls", "--quiet").stdout.split()
            if not snapshots and not content:
                return
            assert time.monotonic() < deadline, f"left after removing {reference}: {snapshots} {content}"
            parents = {fields[1] for fields in snapshots if len(fields) > 2}
            leaves = [fields[0] for fields in snapshots if fields[0] not in parents]
            if leaves:
                self.containerd.ctr("snapshots", "--snapshotter", "native", "rm", *leaves, check=False)
            elif content:
                self.containerd.ctr("content", "rm", *content, check=False)
            time.sleep(0.2)

    def snapshots(self) -> str:
        return self.containerd.ctr("snapshots", "--snapshotter", "native", "ls").stdout

    def check(self, reference: str, image: Image) -> None:
        lines = self.containerd.ctr("images", "ls").stdout.splitlines()
        found = [line.split() for line in lines[1:] if line.split()[0] == reference]
        assert found, f"{reference} not in ctr images ls:\n" + "\n".join(lines)
        assert found[0][2] == image.digest
        self.containerd.ctr("images", "check", f"name=={reference}")
        assert len(self.snapshots().splitlines()) > 1, "image was not unpacked"


class PodmanClient(Client):
    """podman with registries.conf from `mirror client-config podman`."""

    name = "podman"

    def __init__(self, podman: Podman) -> None:
        self.podman = podman

    def pull(self, reference: str) -> None:
        self.podman.podman("pull", "--signature-policy", str(self.podman.policy), reference)

    def remove(self, reference: str) -> None:
        self.podman.podman("rmi", reference)

    def check(self, reference: str, image: Image) -> None:
        self.podman.podman("image", "exists", reference)
        image_id = self.podman.podman("image", "inspect", "--format", "{{.Id}}", reference).stdout.strip()
        assert "sha256:" + image_id == config_digest(image)


class SkopeoClient(Client):
    """skopeo copy docker://<registry>/... dir:..., through the mirrors in the client-config registries.conf."""

    name = "skopeo"

    def __init__(self, skopeo: Skopeo) -> None:
        self.skopeo = skopeo
        self.copies = 0
        self.last: Path | None = None

    def pull(self, reference: str) -> None:
        self.copies += 1
        self.last = self.skopeo.root / "out" / str(self.copies)
        self.last.parent.mkdir(exist_ok=True)
        self.skopeo.skopeo("copy", "--retry-times", "0", f"docker://{reference}", f"dir:{self.last}")

    def remove(self, reference: str) -> None:
        if self.last is not None:
            shutil.rmtree(self.last)

    def check(self, reference: str, image: Image) -> None:
        assert self.last is not None
        manifest = (self.last / "manifest.json").read_bytes()
        expected = amd64(image)
        assert "sha256:" + hashlib.sha256(manifest).hexdigest() == expected.digest
        for digest, data in expected.blobs.items():
            on_disk = (self.last / digest.split(":")[1]).read_bytes()
            assert on_disk == data


def cold_and_warm(
    client: Client, registry: str, kind: str, image: Image, upstreams: list[Upstream], mirror: MirrorProcess
) -> Row:
    """Pull an image no client has pulled yet (cold), remove it locally, pull it again (warm)."""
    reference = client.reference(registry, image)
    expected = set(amd64(image).blobs)
    with measure(upstreams, mirror) as cold:
        client.pull(reference)
    # The client has the last byte before the mirror's fsync; let the cache settle first.
    mirror.wait_idle()
    client.check(reference, image)
    client.remove(reference)
    with measure(upstreams, mirror) as warm:
        client.pull(reference)
    client.check(reference, image)
    client.remove(reference)
    row = Row(client.name, registry, kind, reference, cold, warm)

    # Cold: the pull went through the mirror, and the upstream sent each blob exactly once.
    assert cold.mirror["requests"] > 0 and cold.mirror["manifest_misses"] >= 1, cold.mirror
    assert cold.served == expected, (sorted(cold.served), sorted(expected), cold.registry_log)
    assert cold.registry_blob_gets + cold.cdn_blob_gets <= 2 * len(expected), cold.registry_log
    assert cold.mirror["blob_misses"] == len(expected), cold.mirror
    # Warm: served by the mirror alone, no blob from the upstream.
    assert warm.served == set(), warm.registry_log
    assert warm.registry_blob_gets == 0 and warm.cdn_blob_gets == 0
    assert warm.mirror["blob_misses"] == 0, warm.mirror
    assert warm.mirror["blob_hits"] >= len(expected), warm.mirror
    assert warm.mirror["manifest_hits"] >= 1, warm.mirror
    return row


def assert_each_blob_served_at_most_once(upstreams: list[Upstream]) -> None:
    """Across everything every client has pulled so far, no blob left an upstream twice."""
    for upstream in upstreams:
        registry, cdn = upstream.blobs_served()
        assert not [d for d, n in registry.items() if n > 1], f"{upstream.name} registry: {registry}"
        assert not [d for d, n in cdn.items() if n > 1], f"{upstream.name} CDN: {cdn}"


class ClientMessages(dict[str, str]):
    """What clients printed when they failed, by what was tried: written to a file at the end,
    for a person to read what users would see."""

    def record(self, what: str, result: subprocess.CompletedProcess[str]) -> str:
        """Keep what a failing client printed; returns it for assertions."""
        assert result.returncode != 0, f"{what}: expected a failure, got\n{result.stdout}"
        text = (result.stderr.strip() or result.stdout.strip()).replace("\r", "")
        self[what] = text
        return text

    def write(self, path: Path) -> None:
        text = "".join(f"## {what}\n\n{message}\n\n" for what, message in self.items())
        path.write_text(text)
        print("\n" + text)


def registry_blob_gets(log: list[tuple[str, str, int]]) -> Counter[str]:
    """Per digest: the answered (not 401) blob GETs in a registry's access log."""
    return Counter(
        path.rsplit("/", 1)[1]
        for method, path, status in log
        if method == "GET" and "/blobs/sha256:" in path and status != 401
    )


def no_fallback_hosts(mirror_url: str, hosts: Path) -> Path:
    """hosts.toml for docker.io from `mirror client-config containerd --no-fallback`: the mirror is
    also the `server`, so containerd never falls back to the registry itself. Returns the hosts dir."""
    argv = [MIRROR_CLI, "client-config", "containerd", "--no-fallback", "--url", mirror_url]
    run([*argv, "--registry", "docker.io", "--output", str(hosts)], timeout=30)
    text = (hosts / "docker.io" / "hosts.toml").read_text()
    assert text.startswith(f'server = "{mirror_url}"\n'), text
    assert "registry-1.docker.io" not in text, f"hosts.toml names the registry:\n{text}"
    return hosts
