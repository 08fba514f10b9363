"""Scenario 10: the fleet (issue 17): 3 replicas against 1 mirror, over the same WAN.

Each set-up starts on empty caches: one mirror alone; one mirror behind HAProxy (what the
balancer alone costs: no Redis, no [fleet]); 3 replicas sharing a Redis with the clients
spread over them (as DNS round robin spreads them); the same behind HAProxy with the shipped
`deploy/haproxy.cfg` (blobs hashed on their digest); and behind HAProxy's round robin (a
balancer that knows nothing of digests, like a Kubernetes Service). N cold clients pull at
once, then N warm clients. Redis (Debian's redis-server) and HAProxy run in the foreground on
loopback, stopped by PID, like every other process of the bench.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench import procs
from bench.context import Context, guard, pull  # the scenarios' own pull, measured the same way

REPLICAS = 3
HAPROXY_CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "haproxy.cfg"


def binary(name: str) -> str:
    found = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if Path(p).exists()), None)
    if found is None:
        raise RuntimeError(f"{name} is not installed (scripts/install-deps bench installs it)")
    return found


def haproxy_config(port: int, replica_ports: list[int], *, balance: str = "hash") -> str:
    """The shipped configuration (digest hashing), bound to 127.0.0.1:`port`, its servers replaced
    by the replicas; with `balance = "roundrobin"`, a balancer that knows nothing of digests.
    The one owner of this rewrite: tests/fleet_parts.py uses it too."""
    text = HAPROXY_CONFIG.read_text().replace("bind :5000", f"bind 127.0.0.1:{port}")
    servers = "".join(f"    server mirror-{n} 127.0.0.1:{p}\n" for n, p in enumerate(replica_ports, 1))
    text, count = re.subn(r"(    server mirror-\d+ [^\n]+\n)+", servers, text)
    if count != 2:  # one block per backend
        raise RuntimeError(f"{HAPROXY_CONFIG}: expected 2 blocks of server lines, found {count}")
    if balance == "roundrobin":
        text, count = re.subn(r"    balance [^\n]+\n    hash-type consistent\n", "    balance roundrobin\n", text)
        if count != 2:
            raise RuntimeError(f"{HAPROXY_CONFIG}: expected 2 hashing backends, found {count}")
    return text


@dataclass
class Fleet:
    """Redis, `size` mirrors with a [fleet] table, and HAProxy in front (`balance` "hash" or
    "roundrobin"); with `balance = None` no balancer: the clients are spread over the replicas.
    With `size = 1` a plain mirror (no Redis, no [fleet]) behind HAProxy: the balancer's cost alone."""

    name: str
    upstream: procs.Origin
    root: Path
    size: int = REPLICAS
    balance: str | None = "hash"
    port: int = 0
    replicas: list[procs.Target] = field(default_factory=list)
    redis: subprocess.Popen[bytes] | None = None
    haproxy: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}" if self.balance else self.replicas[0].url

    @property
    def client_urls(self) -> list[str]:
        """Where the clients go: the balancer, or each replica in turn."""
        return [self.url] if self.balance else [replica.url for replica in self.replicas]

    def start_fresh(self) -> Fleet:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)
        redis = self.start_redis() if self.size > 1 else None
        for n in range(self.size):
            replica = procs.Mirror(f"{self.name}-{n}", self.upstream, self.root / f"replica-{n}")
            replica.fleet_redis = redis
            self.replicas.append(replica.start_fresh())
        if self.balance is not None:
            self.port = procs.free_port()
            config = self.root / "haproxy.cfg"
            config.write_text(haproxy_config(self.port, [r.port for r in self.replicas], balance=self.balance))
            self.haproxy = procs.spawn([binary("haproxy"), "-db", "-f", str(config)], log=self.root / "haproxy.log")
            procs.wait_http(f"{self.url}/healthz", self.haproxy)
        if redis is not None:
            self.wait_members()
        return self

    def start_redis(self) -> str:
        port = procs.free_port()
        argv = [binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "no", "--dir", str(self.root), "--daemonize", "no"]
        self.redis = procs.spawn(argv, log=self.root / "redis.log")
        procs.wait_port(port, self.redis)
        return f"redis://127.0.0.1:{port}/0"

    def wait_members(self, timeout: float = 30.0) -> None:
        """Every replica sees all the others (a replica that does not would download on its own)."""
        deadline = time.monotonic() + timeout
        while True:
            seen = [
                len(httpx.get(f"{r.url}/stats", params={"scope": "fleet"}, timeout=5).json()["replicas"])
                for r in self.replicas
            ]
            if all(n == self.size for n in seen):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the replicas see {seen} members, not {self.size}")
            time.sleep(0.2)

    def copies(self) -> dict[str, Any]:
        """What each replica holds, from its /stats."""
        held = [httpx.get(f"{r.url}/stats", timeout=5).json() for r in self.replicas]
        return {
            "replica_blobs": [s["cached_blobs"] for s in held],
            "replica_bytes": [s["cached_bytes"] for s in held],
        }

    def stop(self) -> None:
        procs.stop(self.haproxy)
        self.haproxy = None
        for replica in self.replicas:
            replica.stop()
        self.replicas = []
        procs.stop(self.redis)
        self.redis = None


def s10_fleet(ctx: Context) -> dict[str, Any]:
    if "mirror" not in ctx.targets:
        return {}
    clients = ctx.args.fleet_clients
    run_dir = ctx.run_dir
    setups: dict[str, procs.Target | Fleet] = {
        "1 mirror": ctx.targets["mirror"],
        "1 mirror behind HAProxy": Fleet("behind-haproxy", ctx.upstream, run_dir / "behind-haproxy", size=1),
        f"{REPLICAS} replicas, clients spread over them": Fleet(
            "spread", ctx.upstream, run_dir / "spread", balance=None
        ),
        f"{REPLICAS} replicas behind HAProxy, digest hash": Fleet("hash", ctx.upstream, run_dir / "hash"),
        f"{REPLICAS} replicas behind HAProxy, round robin": Fleet(
            "roundrobin", ctx.upstream, run_dir / "roundrobin", balance="roundrobin"
        ),
    }
    results: dict[str, Any] = {}
    for label, setup in setups.items():

        def run(setup: procs.Target | Fleet = setup) -> dict[str, Any]:
            try:
                setup.start_fresh()
                cold = pull(ctx, setup, clients)
                warm = pull(ctx, setup, clients)
                out: dict[str, Any] = {"ok": cold["ok"] and warm["ok"], "cold": cold, "warm": warm}
                if isinstance(setup, Fleet) and setup.size > 1:
                    out.update(setup.copies())
                return out
            finally:
                setup.stop()

        results[label] = guard(ctx, "10 fleet", label, run)
    return {"mirror": results}
