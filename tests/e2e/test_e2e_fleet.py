"""The fleet with real clients: Docker Engine and containerd pull through HAProxy in front of three replicas.

Each test starts its own fleet (Redis, three `mirror serve` replicas with empty caches, HAProxy with
the shipped deploy/haproxy.cfg) in front of a plain distribution registry of this module's own; its
access log, read from a mark, counts that test's pulls alone. Docker is set up as README says
(`registry-mirrors` from `mirror client-config docker`), containerd with `mirror client-config
containerd --no-fallback`, both with HAProxy's URL: neither can reach the registry but through it.

With digest hashing, each blob leaves the registry once and lives on one replica, the one HAProxy
sends its digest to; the other client's pull then costs the registry no blob. With round robin,
Docker and containerd pulling the same images at once reach different replicas for the same blob,
and the registry still serves it once: the lease in Redis, or the holder's copy.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from e2e_parts import (
    KINDS,
    Client,
    Containerd,
    ContainerdClient,
    DockerClient,
    DockerEngine,
    amd64,
    no_fallback_hosts,
    registry_blob_gets,
    seed_kinds,
)
from fleet_parts import ReplicaSet
from support import Image, Pusher, Registry

pytestmark = pytest.mark.e2e


@dataclass
class Origin:
    registry: Registry
    images: dict[str, Image]  # kind -> image, no blob shared between them

    def pulled_blobs(self) -> set[str]:
        """What a linux/amd64 client fetches with /blobs/: layers and config of each image."""
        return {digest for image in self.images.values() for digest in amd64(image).blobs}


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Origin]:
    """A plain distribution registry of this module's own, with one image of each kind."""
    registry = Registry(tmp_path_factory.mktemp("fleet-registry")).start()
    try:
        with Pusher(registry.url) as pusher:
            images = seed_kinds(pusher, {kind: (f"library/fleet-{kind}", "latest") for kind in KINDS}, 4000)
        yield Origin(registry, images)
    finally:
        registry.stop()


@dataclass
class FleetAndClients:
    fleet: ReplicaSet
    docker: DockerClient
    containerd: ContainerdClient


@contextmanager
def fleet_and_clients(root: Path, origin: Origin, *, round_robin: bool) -> Iterator[FleetAndClients]:
    """A fresh fleet; dockerd with HAProxy in registry-mirrors, containerd with HAProxy as its only host."""
    fleet = ReplicaSet.start(root / "fleet", origin.registry.url, round_robin=round_robin)
    engine = DockerEngine(root / "dk", fleet.balancer.url)
    containerd = Containerd(root / "ctd")
    try:
        engine.start()
        hosts = no_fallback_hosts(fleet.balancer.url, root / "certs.d")
        containerd.start()
        # DockerClient names its mirror only in references to registries other than docker.io: none here.
        yield FleetAndClients(fleet, DockerClient(engine, fleet.replicas[0]), ContainerdClient(containerd, hosts))
    finally:
        try:
            containerd.stop()
            engine.stop()
        finally:
            fleet.stop()


@dataclass
class FleetCost:
    """What the pulls in a block cost the registry, and where the fleet keeps the blobs afterwards."""

    registry_log: list[tuple[str, str, int]] = field(default_factory=list)
    copies: dict[str, list[int]] = field(default_factory=dict)  # digest -> the replicas holding it

    def blob_gets(self) -> Counter[str]:
        return registry_blob_gets(self.registry_log)

    def manifest_gets(self) -> int:
        return sum(1 for method, path, _ in self.registry_log if method == "GET" and "/manifests/" in path)


@contextmanager
def measure(origin: Origin, fleet: ReplicaSet) -> Iterator[FleetCost]:
    mark = origin.registry.mark()
    cost = FleetCost()
    yield cost
    fleet.wait_idle()
    cost.registry_log = origin.registry.requests_since(mark)
    cost.copies = {digest: fleet.holders(digest) for digest in sorted(origin.pulled_blobs())}


def pull_every_kind(client: Client, origin: Origin) -> None:
    for image in origin.images.values():
        reference = client.reference("docker.io", image)
        client.pull(reference)
        client.check(reference, image)


RESULTS: list[tuple[str, str, str, FleetCost]] = []  # (balancing, client(s), cold/warm, cost)


@pytest.mark.parametrize("first", ["docker", "containerd"])
def test_digest_hashing_one_download_and_one_copy_per_blob(first: str, tmp_path: Path, origin: Origin) -> None:
    """`first` pulls every kind cold, the other client then pulls them warm from the fleet."""
    expected = Counter(dict.fromkeys(origin.pulled_blobs(), 1))
    with fleet_and_clients(tmp_path, origin, round_robin=False) as parts:
        clients: dict[str, Client] = {"docker": parts.docker, "containerd": parts.containerd}
        cold_client = clients.pop(first)
        (warm_client,) = clients.values()
        with measure(origin, parts.fleet) as cold:
            pull_every_kind(cold_client, origin)
        RESULTS.append(("digest hashing", cold_client.name, "cold", cold))
        with measure(origin, parts.fleet) as warm:
            pull_every_kind(warm_client, origin)
        RESULTS.append(("digest hashing", warm_client.name, "warm", warm))

    assert cold.blob_gets() == expected, ("each blob once from the registry", cold.registry_log)
    assert all(len(held) == 1 for held in cold.copies.values()), ("each blob on one replica", cold.copies)
    owners = Counter(held[0] for held in cold.copies.values())
    assert len(owners) > 1, ("the digests spread over the replicas: their disks add up", owners)
    assert warm.blob_gets() == Counter(), ("the fleet held every blob", warm.registry_log)
    assert warm.copies == cold.copies, "the warm pull went to the same replica for each blob, no new copy"


def test_round_robin_docker_and_containerd_at_once_one_download_per_blob(tmp_path: Path, origin: Origin) -> None:
    """A balancer that knows nothing of digests: both clients' requests for a blob reach different replicas."""
    with fleet_and_clients(tmp_path, origin, round_robin=True) as parts:
        with measure(origin, parts.fleet) as cold, ThreadPoolExecutor(2) as pool:
            pulls = [pool.submit(pull_every_kind, client, origin) for client in (parts.docker, parts.containerd)]
            for done in pulls:
                done.result()
        RESULTS.append(("round robin", "docker + containerd at once", "cold", cold))

    assert cold.blob_gets() == Counter(dict.fromkeys(origin.pulled_blobs(), 1)), cold.registry_log
    assert all(cold.copies.values()), ("every blob pulled is held by a replica", cold.copies)


@pytest.fixture(scope="module", autouse=True)
def results_file(tmp_path_factory: pytest.TempPathFactory, origin: Origin) -> Iterator[None]:
    """Per pull: what the registry served, and the copies in the fleet, in the session's temporary directory."""
    yield
    blobs = len(origin.pulled_blobs())
    lines = [
        f"Every kind ({', '.join(KINDS)}) pulled for linux/amd64: {blobs} blobs (layers and configs).",
        "",
        "| balancing | client | pull | registry blob GETs | most GETs of one blob | registry manifest GETs "
        "| copies per blob (copies×blobs) | blobs per replica |",
        "|" + "---|" * 8,
    ]
    for balancing, client, pull, cost in RESULTS:
        gets = cost.blob_gets()
        copies = Counter(len(held) for held in cost.copies.values())
        per_replica = Counter(n for held in cost.copies.values() for n in held)
        lines.append(
            f"| {balancing} | {client} | {pull} | {gets.total()} | {max(gets.values(), default=0)} "
            f"| {cost.manifest_gets()} | {', '.join(f'{c}×{n}' for c, n in sorted(copies.items()))} "
            f"| {', '.join(str(per_replica[n]) for n in range(3))} |"
        )
    text = "\n".join(lines) + "\n"
    (tmp_path_factory.getbasetemp() / "e2e-fleet.md").write_text(text)
    print("\n" + text)
