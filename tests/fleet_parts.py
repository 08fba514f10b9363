"""Real parts for the fleet's tests: Debian's redis-server and haproxy in the foreground, stopped
by PID; replicas as `mirror serve` processes; a client that pulls as Docker does (retrying a cut
blob with Range, through the balancer)."""

from __future__ import annotations

import hashlib
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from support import ALL_MANIFESTS, ByPid, Image, MirrorProcess, free_port, start_server
from tools import tool

from bench.fleet import haproxy_config  # the shipped deploy/haproxy.cfg, bound to loopback

SECRET = "fleet-secret-for-the-tests-0123"


@dataclass
class RedisServer(ByPid):
    root: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.root.mkdir(parents=True, exist_ok=True)
        argv = [tool("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "no", "--dir", str(self.root), "--daemonize", "no"]
        self.process = start_server(argv, self.root / "redis.log", self.port)
        return self


@dataclass
class HAProxy(ByPid):
    """haproxy with the shipped configuration, its servers replaced by the replicas."""

    root: Path
    replicas: list[MirrorProcess]
    round_robin: bool = False
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> str:
        # round robin: a balancer that knows nothing of digests (DNS, a Kubernetes Service)
        balance = "roundrobin" if self.round_robin else "hash"
        return haproxy_config(self.port, [r.port for r in self.replicas], balance=balance)

    def start(self) -> HAProxy:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / "haproxy.cfg"
        path.write_text(self.config())
        self.process = start_server([tool("haproxy"), "-db", "-f", str(path)], self.root / "haproxy.log", self.port)
        return self


def replica(
    root: Path,
    upstream_url: str,
    redis: RedisServer,
    *,
    extra: str = "",
    upstream_config: str = "",
    fleet_config: str = "",
) -> MirrorProcess:
    mirror = MirrorProcess(root, {"docker.io": upstream_url}, upstream_config=upstream_config)
    mirror.extra_config = (
        f'{extra}\n[fleet]\nredis = "{redis.url}"\npeer_url = "http://127.0.0.1:{mirror.port}"\n'
        f'secret = "{SECRET}"\nheartbeat = "0.5s"\nlease_ttl = "2s"\n{fleet_config}\n'
    )
    return mirror


def fleet_members(mirror: MirrorProcess) -> list[str]:
    """The peer URLs of the live replicas, as `mirror` sees them."""
    stats = httpx.get(f"{mirror.url}/stats", params={"scope": "fleet"}, auth=mirror.admin).json()
    return [r["peer_url"] for r in stats["replicas"]]


def wait_members(replicas: list[MirrorProcess], count: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        seen = [len(fleet_members(r)) for r in replicas]
        if all(n == count for n in seen):
            return
        assert time.monotonic() < deadline, f"replicas see {seen} members, not {count}"
        time.sleep(0.2)


def pull(base_url: str, image: Image, attempts: int = 20) -> bool:
    """Manifest, then every blob, each hashed; a cut blob is resumed with Range, as Docker does."""
    accept = {"Accept": ", ".join(ALL_MANIFESTS)}
    with httpx.Client(base_url=base_url, timeout=60) as client:
        for attempt in range(attempts):
            try:
                answer = client.get(f"/v2/{image.repository}/manifests/{image.tag}", headers=accept)
                if answer.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2 * (attempt + 1))
        else:
            return False
        for digest, data in image.all_blobs().items():
            if not _blob(client, image.repository, digest, data, attempts):
                return False
    return True


def _blob(client: httpx.Client, repository: str, digest: str, data: bytes, attempts: int) -> bool:
    received = bytearray()
    for attempt in range(attempts):
        headers = {"Range": f"bytes={len(received)}-"} if received else {}
        try:
            with client.stream("GET", f"/v2/{repository}/blobs/{digest}", headers=headers) as response:
                if response.status_code not in (200, 206):
                    raise httpx.HTTPError(f"answered {response.status_code}")
                if response.status_code == 200:
                    received.clear()
                for chunk in response.iter_bytes():
                    received += chunk
            if len(received) == len(data):
                return "sha256:" + hashlib.sha256(received).hexdigest() == digest
        except httpx.HTTPError:
            pass
        time.sleep(0.2 * (attempt + 1))
    return False


@dataclass
class ReplicaSet:
    """Redis, replicas of one upstream and HAProxy in front of them, started and stopped as one."""

    redis: RedisServer
    replicas: list[MirrorProcess]
    balancer: HAProxy

    @classmethod
    def start(
        cls,
        root: Path,
        upstream_url: str,
        *,
        round_robin: bool = False,
        count: int = 3,
        extra: str = "",
        upstream_config: str = "",
        fleet_config: str = "",
    ) -> ReplicaSet:
        redis = RedisServer(root / "redis").start()
        replicas = [
            replica(
                root / f"replica-{n}",
                upstream_url,
                redis,
                extra=extra,
                upstream_config=upstream_config,
                fleet_config=fleet_config,
            )
            for n in range(count)
        ]
        fleet = cls(redis, replicas, HAProxy(root / "haproxy", replicas, round_robin=round_robin))
        try:
            for mirror in replicas:
                mirror.start()
            wait_members(replicas, count)
            fleet.balancer.start()
        except BaseException:
            fleet.stop()
            raise
        return fleet

    def stop(self) -> None:
        self.balancer.stop()
        for mirror in self.replicas:
            mirror.stop()
        self.redis.stop()

    def wait_idle(self) -> None:
        """Clients get a blob's last byte before the replica's fsync: wait for every replica to settle."""
        for mirror in self.replicas:
            mirror.wait_idle()

    def holders(self, digest: str) -> list[int]:
        """The replicas (by index) that hold the blob; every copy must hash to its digest."""
        held = [n for n, mirror in enumerate(self.replicas) if mirror.blob_path(digest).exists()]
        for n in held:
            data = self.replicas[n].blob_path(digest).read_bytes()
            assert "sha256:" + hashlib.sha256(data).hexdigest() == digest, f"replica {n}'s copy of {digest} is corrupt"
        return held
