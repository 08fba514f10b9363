"""Tiers with real clients: Docker Engine and containerd pull through an edge mirror chained to a regional one.

The edge has the registry's url but `mirrors_only = true`: it never dials the registry, it asks the
regional mirror (`?ns=docker.io`), and the regional mirror pulls through from the registry. Each test
starts its own pair of mirrors with empty caches, in front of a plain distribution registry of this
module's own, so the registry's access log counts that test's pulls alone: each blob the client needs
leaves the registry exactly once, fetched by the regional mirror for the edge.

Docker is set up as README says (`mirror client-config docker`: registry-mirrors); containerd with
`mirror client-config containerd --no-fallback`, whose hosts.toml names the edge as `server` too, so
containerd never falls back to the registry itself.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
from support import Image, MirrorProcess, Pusher, Registry

pytestmark = pytest.mark.e2e


@dataclass
class Tiers:
    """A registry, a regional mirror pulling through from it, and an edge that asks only the regional mirror."""

    registry: Registry
    regional: MirrorProcess
    edge: MirrorProcess


@dataclass
class TierCost:
    """What one pull cost each tier: the registry's access log, and each mirror's /stats counters."""

    registry_log: list[tuple[str, str, int]] = field(default_factory=list)
    regional: dict[str, int] = field(default_factory=dict)
    regional_to_registry: int = 0  # requests the regional mirror sent the registry
    edge: dict[str, int] = field(default_factory=dict)
    edge_to_regional: int = 0  # requests the edge sent upstream (to the regional mirror, as mirrors_only)

    def blob_gets(self) -> Counter[str]:
        return registry_blob_gets(self.registry_log)


RESULTS: list[tuple[str, str, str, dict[str, int], TierCost]] = []  # (client, kind, cold/warm, expected GETs, cost)
MESSAGES: dict[str, str] = {}  # what containerd said when it could not pull


def counters(stats: dict[str, Any]) -> dict[str, int]:
    return {key: value for key, value in stats.items() if isinstance(value, int) and key != "uptime_seconds"}


@contextmanager
def measure(tiers: Tiers) -> Iterator[TierCost]:
    """Count what each tier saw during the block; waits for both mirrors' downloads to settle first."""
    mark = tiers.registry.mark()
    regional_before, edge_before = tiers.regional.stats(), tiers.edge.stats()
    cost = TierCost()
    yield cost
    # Clients have the last byte before a mirror's fsync: let both caches settle before counting.
    tiers.edge.wait_idle()
    tiers.regional.wait_idle()
    regional_after, edge_after = tiers.regional.stats(), tiers.edge.stats()
    cost.registry_log = tiers.registry.requests_since(mark)
    cost.regional = {k: v - counters(regional_before)[k] for k, v in counters(regional_after).items()}
    cost.edge = {k: v - counters(edge_before)[k] for k, v in counters(edge_after).items()}
    cost.regional_to_registry = (
        regional_after["upstreams"]["docker.io"]["requests"] - regional_before["upstreams"]["docker.io"]["requests"]
    )
    cost.edge_to_regional = (
        edge_after["upstreams"]["docker.io"]["requests"] - edge_before["upstreams"]["docker.io"]["requests"]
    )


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Registry, dict[str, Image]]]:
    """A plain distribution registry of this module's own, with one image of each kind (no shared layers)."""
    registry = Registry(tmp_path_factory.mktemp("tiers-registry")).start()
    try:
        with Pusher(registry.url) as pusher:
            images = seed_kinds(pusher, {kind: (f"library/tiered-{kind}", "latest") for kind in KINDS}, 3000)
        yield registry, images
    finally:
        registry.stop()


@pytest.fixture
def tiers(tmp_path: Path, origin: tuple[Registry, dict[str, Image]]) -> Iterator[Tiers]:
    """A fresh regional mirror and a fresh edge (`mirrors_only`) in front of it: empty caches."""
    registry, _ = origin
    regional = MirrorProcess(tmp_path / "regional", {"docker.io": registry.url}).start()
    try:
        keys = f'mirrors = ["{regional.url}"]\nmirrors_only = true\n'
        edge = MirrorProcess(tmp_path / "edge", {"docker.io": registry.url}, upstream_keys={"docker.io": keys})
        edge.start()
        try:
            yield Tiers(registry, regional, edge)
        finally:
            edge.stop()
    finally:
        regional.stop()


def pull_cold_then_warm(client: Client, tiers: Tiers, kind: str, image: Image) -> None:
    """Cold: the registry sends each blob once, to the regional mirror. Warm: the edge alone answers."""
    reference = client.reference("docker.io", image)
    expected = dict.fromkeys(amd64(image).blobs, 1)
    with measure(tiers) as cold:
        client.pull(reference)
    RESULTS.append((client.name, kind, "cold", expected, cold))
    client.check(reference, image)
    client.remove(reference)
    with measure(tiers) as warm:
        client.pull(reference)
    RESULTS.append((client.name, kind, "warm", expected, warm))
    client.check(reference, image)
    client.remove(reference)

    assert cold.blob_gets() == Counter(expected), (kind, cold.registry_log)
    # Only the regional mirror dialed the registry: it sent every request the registry logged.
    assert cold.regional_to_registry == len(cold.registry_log), (cold.regional_to_registry, cold.registry_log)
    assert cold.regional["blob_misses"] == len(expected), cold.regional  # it served the edge
    assert cold.edge["blob_misses"] == len(expected) and cold.edge_to_regional > 0, cold.edge
    assert cold.edge["manifest_misses"] >= 1, cold.edge

    assert warm.registry_log == [], warm.registry_log  # the tag is fresh at the edge: not even a manifest GET
    assert warm.edge_to_regional == 0 and warm.regional["requests"] == 0, (warm.edge_to_regional, warm.regional)
    assert warm.edge["blob_misses"] == 0 and warm.edge["blob_hits"] >= len(expected), warm.edge


@pytest.fixture
def docker_on_the_edge(tmp_path: Path, tiers: Tiers) -> Iterator[DockerClient]:
    """dockerd with the edge in registry-mirrors (`mirror client-config docker`), as the main suite sets it up."""
    engine = DockerEngine(tmp_path / "dk", tiers.edge.url)
    try:
        engine.start()
        yield DockerClient(engine, tiers.edge)
    finally:
        engine.stop()


@pytest.mark.parametrize("kind", KINDS)
def test_docker_pulls_through_an_edge_chained_to_a_regional_mirror(
    kind: str, docker_on_the_edge: DockerClient, tiers: Tiers, origin: tuple[Registry, dict[str, Image]]
) -> None:
    pull_cold_then_warm(docker_on_the_edge, tiers, kind, origin[1][kind])


@pytest.fixture
def containerd_on_the_edge(tmp_path: Path, tiers: Tiers) -> Iterator[ContainerdClient]:
    """containerd with the hosts.toml of `mirror client-config containerd --no-fallback` for the edge."""
    hosts = no_fallback_hosts(tiers.edge.url, tmp_path / "certs.d")
    containerd = Containerd(tmp_path / "ctd")
    try:
        containerd.start()
        yield ContainerdClient(containerd, hosts)
    finally:
        containerd.stop()


@pytest.mark.parametrize("kind", KINDS)
def test_containerd_pulls_through_an_edge_chained_to_a_regional_mirror(
    kind: str, containerd_on_the_edge: ContainerdClient, tiers: Tiers, origin: tuple[Registry, dict[str, Image]]
) -> None:
    pull_cold_then_warm(containerd_on_the_edge, tiers, kind, origin[1][kind])


def test_containerd_without_fallback_never_leaves_the_edge(
    containerd_on_the_edge: ContainerdClient, tiers: Tiers, origin: tuple[Registry, dict[str, Image]]
) -> None:
    """A name nobody has, then the edge down: containerd says so, and names no registry it fell back to."""
    client = containerd_on_the_edge
    absent = client.containerd.ctr(
        "images", "pull", "--hosts-dir", str(client.hosts_dir), "--snapshotter", "native",
        "--platform", "linux/amd64", "docker.io/library/absent:latest", check=False,
    )  # fmt: skip
    MESSAGES["ctr pull of a name nobody has"] = absent.stderr.strip()
    assert absent.returncode != 0
    assert "not found" in absent.stderr and "registry-1.docker.io" not in absent.stderr, absent.stderr
    # containerd asked the edge as its mirror ([host]), then again as its `server`: never the registry.
    asked = [line for line in tiers.edge.log_path.read_text().splitlines() if "/v2/library/absent/manifests/" in line]
    assert len(asked) == 2 and all("?ns=docker.io" in line for line in asked), asked

    tiers.edge.stop()
    image = origin[1]["schema2"]
    down = client.containerd.ctr(
        "images", "pull", "--hosts-dir", str(client.hosts_dir), "--snapshotter", "native",
        "--platform", "linux/amd64", client.reference("docker.io", image), check=False,
    )  # fmt: skip
    MESSAGES["ctr pull with the edge down"] = down.stderr.strip()
    assert down.returncode != 0
    assert f"127.0.0.1:{tiers.edge.port}" in down.stderr, down.stderr
    assert "registry-1.docker.io" not in down.stderr, down.stderr


@pytest.fixture(scope="module", autouse=True)
def results_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Per pull: what each tier saw, in the session's temporary directory (and on stdout with -s)."""
    yield
    lines = [
        "| client | kind | pull | registry blob GETs (per blob) | registry requests | regional → registry "
        "| regional blob misses / hits | edge → regional | edge blob misses / hits |",
        "|" + "---|" * 9,
    ]
    for client, kind, pull, expected, cost in RESULTS:
        gets = cost.blob_gets()
        per_blob = ", ".join(f"{digest[7:19]}×{gets[digest]}" for digest in {**expected, **gets}) if gets else "none"
        lines.append(
            f"| {client} | {kind} | {pull} | {per_blob} | {len(cost.registry_log)} | {cost.regional_to_registry} "
            f"| {cost.regional.get('blob_misses', 0)} / {cost.regional.get('blob_hits', 0)} | {cost.edge_to_regional} "
            f"| {cost.edge.get('blob_misses', 0)} / {cost.edge.get('blob_hits', 0)} |"
        )
    text = "\n".join(lines) + "\n" + "".join(f"\n{what}:\n{message}\n" for what, message in MESSAGES.items())
    (tmp_path_factory.getbasetemp() / "e2e-tiers.md").write_text(text)
    print("\n" + text)
