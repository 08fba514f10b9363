"""A fleet of replicas coordinated through Redis, behind HAProxy: one upstream download per blob.

Real parts: Debian's redis-server and haproxy, mirror processes as replicas, nginx in front of
the real registry (it logs the body bytes the upstream served, per request).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from fake_upstream import FakeUpstream
from fleet_parts import SECRET, ReplicaSet, fleet_members, pull, wait_members
from pacing import PacedUpstream
from prometheus_client.parser import text_string_to_metric_families
from support import ALL_MANIFESTS, Image, Pusher, Registry
from test_access import htpasswd

from mirror.fleet.signing import AUTH_HEADER, sign


@dataclass
class Origin:
    registry: Registry
    images: list[Image]


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Origin]:
    registry = Registry(tmp_path_factory.mktemp("fleet-origin")).start()
    try:
        with Pusher(registry.url) as pusher:
            images = [pusher.image(f"library/fleet{n}", "1", [3 << 20, 1 << 20, 4096], seed=300 + n) for n in range(4)]
        yield Origin(registry, images)
    finally:
        registry.stop()


@dataclass
class Fleet(ReplicaSet):
    """The replicas, with nginx between them and the registry counting what the upstream served."""

    upstream: PacedUpstream

    def stop(self) -> None:
        super().stop()
        self.upstream.stop()


def start_fleet(
    root: Path,
    origin: Origin,
    *,
    round_robin: bool,
    rate: str = "0",
    count: int = 3,
    cache: str = "",
    upstream_config: str = "",
    fleet_config: str = "",
) -> Fleet:
    upstream = PacedUpstream(origin.registry, root / "nginx", rate=rate).start()
    try:
        replicas = ReplicaSet.start(
            root,
            upstream.url,
            round_robin=round_robin,
            count=count,
            extra=cache,
            upstream_config=upstream_config,
            fleet_config=fleet_config,
        )
    except BaseException:
        upstream.stop()
        raise
    return Fleet(replicas.redis, replicas.replicas, replicas.balancer, upstream)


def upstream_bytes(upstream: PacedUpstream, images: list[Image]) -> tuple[int, int]:
    """(blob body bytes the upstream served, one copy of the images' blobs)."""
    digests = {d for image in images for d in image.all_blobs()}
    served = sum(upstream.body_bytes(digest) for digest in digests)
    return served, sum(len(data) for image in images for data in image.all_blobs().values())


def pull_all(url: str, images: list[Image], clients: int) -> list[bool]:
    jobs = [images[n % len(images)] for n in range(clients)]
    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(lambda image: pull(url, image), jobs))


def test_round_robin_32_cold_clients_one_download_per_blob(origin: Origin, tmp_path: Path) -> None:
    fleet = start_fleet(tmp_path, origin, round_robin=True)
    try:
        assert all(pull_all(fleet.balancer.url, origin.images, 32))
        fleet.wait_idle()
        served, one_copy = upstream_bytes(fleet.upstream, origin.images)
        print(f"round robin, 32 cold clients: upstream {served / one_copy:.2f}× the images")
        assert served == one_copy, "each blob once from the upstream, whatever replica asked"
        # holders() hashes every copy it finds
        spread = [len(fleet.holders(d)) for image in origin.images for d in image.all_blobs()]
        assert max(spread) > 1, "popular blobs spread over several replicas"
        # Every replica, and the fleet's totals: /stats?scope=fleet, the dashboard, mirror stats --fleet.
        time.sleep(1.0)  # a heartbeat after the pulls
        seen = httpx.get(f"{fleet.replicas[0].url}/stats", params={"scope": "fleet"}).json()
        assert seen["redis"] == "up" and seen["totals"]["replicas"] == 3
        assert seen["totals"]["blobs"] == sum(r.stats()["cached_blobs"] for r in fleet.replicas)
        assert httpx.get(f"{fleet.replicas[1].url}/api/dashboard").json()["fleet"]["totals"]["replicas"] == 3
        table = subprocess.run(
            [
                sys.executable,
                "-m",
                "mirror",
                "stats",
                "--fleet",
                "--config",
                str(fleet.replicas[2].root / "config.toml"),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert table.returncode == 0 and table.stdout.startswith("redis up"), table.stderr
        assert all(r.url in table.stdout for r in fleet.replicas)
    finally:
        fleet.stop()


def test_a_manifest_by_digest_is_fetched_once_for_the_fleet(origin: Origin, tmp_path: Path) -> None:
    """Index children and pinned digests, asked of several replicas at once: the upstream is asked
    once (Docker Hub counts manifest GETs as pulls). With a credential, the cache may hold what not
    every client may read: a shared manifest is served under a repository only once the upstream
    says it is there."""
    credential = 'username = "puller"\npassword = "not-asked-for"\n'  # the registry never challenges
    fleet = start_fleet(tmp_path, origin, round_robin=True, upstream_config=credential)
    try:
        image, other = origin.images[0], origin.images[1]
        path = f"/v2/{image.repository}/manifests/{image.digest}"
        accept = {"Accept": ", ".join(ALL_MANIFESTS)}
        with ThreadPoolExecutor(8) as pool:  # replicas 0 and 1 at once; replica 2 never asked for it
            answers = list(pool.map(lambda n: httpx.get(fleet.replicas[n % 2].url + path, headers=accept), range(8)))
        assert all(a.status_code == 200 and a.content == image.manifest for a in answers)
        elsewhere = f"/v2/{other.repository}/manifests/{image.digest}"
        refused = httpx.get(fleet.replicas[2].url + elsewhere, headers=accept)
        assert refused.status_code == 404 and refused.content != image.manifest
        served = httpx.get(fleet.replicas[2].url + path, headers=accept)
        assert served.status_code == 200 and served.content == image.manifest
        asked = [(r.method, r.uri) for r in fleet.upstream.requests() if "/manifests/" in r.uri]
        assert asked.count(("GET", path)) == 1, asked
        assert ("HEAD", elsewhere) in asked and ("GET", elsewhere) not in asked, asked
    finally:
        fleet.stop()


def test_digest_hashing_keeps_one_copy_in_the_fleet(origin: Origin, tmp_path: Path) -> None:
    fleet = start_fleet(tmp_path, origin, round_robin=False)
    try:
        assert all(pull_all(fleet.balancer.url, origin.images, 16))
        fleet.wait_idle()
        for image in origin.images:
            for digest in image.blobs:
                assert len(fleet.holders(digest)) == 1, digest
        stored = sum(r.stats()["cached_bytes"] for r in fleet.replicas)
        manifests = sum(len(image.manifest) for image in origin.images)
        _, one_copy = upstream_bytes(fleet.upstream, origin.images)
        assert stored - manifests * len(fleet.replicas) <= one_copy, "the disks add up to one copy"
    finally:
        fleet.stop()


def test_a_replica_killed_mid_pull_and_its_rejoin(origin: Origin, tmp_path: Path) -> None:
    """32 cold clients on one image, and a replica SIGKILLed mid-download."""
    fleet = start_fleet(tmp_path, origin, round_robin=True, rate="2m")
    image = origin.images[0]
    try:
        with ThreadPoolExecutor(1) as pool:
            pulls = pool.submit(pull_all, fleet.balancer.url, [image], 32)
            time.sleep(1.0)
            fleet.replicas[0].kill()
            assert all(pulls.result()), "every pull completes: retried through the balancer"
        for mirror in fleet.replicas[1:]:
            mirror.wait_idle()
        served, one_copy = upstream_bytes(fleet.upstream, [image])
        largest = max(len(data) for data in image.all_blobs().values())
        print(f"replica killed: upstream {served:,} bytes for {one_copy:,} ({served / one_copy:.2f}×)")
        assert served <= one_copy + largest
        for digest in image.all_blobs():
            fleet.holders(digest)  # hashes every copy: no file anywhere is corrupt, the dead one's included
        # It drops out of the fleet after three missed heartbeats (0.5 s each here)...
        deadline = time.monotonic() + 5
        while fleet.replicas[0].url in fleet_members(fleet.replicas[1]):
            assert time.monotonic() < deadline, "a killed replica stays a member"
            time.sleep(0.2)
        fleet.replicas[0].start()  # ...and rejoins: registers what it holds
        wait_members(fleet.replicas, 3)
        mark = len(fleet.upstream.requests())
        assert all(pull_all(fleet.balancer.url, [image], 16))
        fleet.wait_idle()
        after = [r for r in fleet.upstream.requests()[mark:] if "/blobs/" in r.uri]
        print(f"after the rejoin: {sum(r.body_bytes for r in after):,} upstream blob bytes")
        assert sum(r.body_bytes for r in after) == 0, "a rejoined replica costs no upstream bytes"
        for digest in image.all_blobs():
            fleet.holders(digest)
    finally:
        fleet.stop()


def test_redis_down_and_back(origin: Origin, tmp_path: Path) -> None:
    fleet = start_fleet(tmp_path, origin, round_robin=True, rate="2m")
    try:
        with ThreadPoolExecutor(1) as pool:  # Redis killed while 8 pulls are on their way
            pulls = pool.submit(pull_all, fleet.balancer.url, origin.images[:1], 8)
            time.sleep(1.0)
            fleet.redis.kill()
            assert all(pulls.result()), "pulls go on without Redis"
        health = fleet.replicas[0].stats()["fleet"]
        assert health["redis"].startswith("down") and health["redis_failures"] > 0
        text = httpx.get(f"{fleet.replicas[0].url}/metrics").text
        metrics = {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}
        assert metrics["mirror_fleet_redis_up"] == 0 and metrics["mirror_fleet_redis_failures_total"] > 0
        fleet.redis.start()  # empty: the replicas register again
        wait_members(fleet.replicas, 3)
        fleet.wait_idle()
        mark = len(fleet.upstream.requests())
        failures = [r.stats()["fleet"]["redis_failures"] for r in fleet.replicas]
        assert all(pull_all(fleet.balancer.url, origin.images[1:], 16))
        fleet.wait_idle()
        # Each pooled connection to the Redis that was killed fails on its first use: it is
        # opened again, not counted as Redis failing (then a replica would fetch on its own).
        assert [r.stats()["fleet"]["redis_failures"] for r in fleet.replicas] == failures
        digests = {d for image in origin.images[1:] for d in image.all_blobs()}
        gets = [r for r in fleet.upstream.requests()[mark:] if r.uri.rsplit("/", 1)[-1] in digests]
        one_copy = sum(len(data) for image in origin.images[1:] for data in image.all_blobs().values())
        print(f"Redis back, 16 cold clients: {sum(r.body_bytes for r in gets):,} upstream bytes for {one_copy:,}")
        assert sum(r.body_bytes for r in gets) == one_copy, "1.00× again once Redis is back"
    finally:
        fleet.stop()


def test_tags_revalidated_once_per_ttl_for_the_whole_fleet(origin: Origin, tmp_path: Path) -> None:
    fleet = start_fleet(tmp_path, origin, round_robin=True, cache='tag_ttl = "2s"')
    try:
        image = origin.images[0]
        url = f"/v2/{image.repository}/manifests/{image.tag}"
        mark = len(fleet.upstream.requests())
        started = time.monotonic()
        with httpx.Client(base_url=fleet.balancer.url) as client:
            while time.monotonic() - started < 10:
                assert client.get(url, headers={"Accept": ", ".join(ALL_MANIFESTS)}).status_code == 200
                time.sleep(0.01)
        asked = [r for r in fleet.upstream.requests()[mark:] if "/manifests/" in r.uri]
        print(f"tags: {len(asked)} upstream manifest requests in 10 s with tag_ttl 2s over 3 replicas")
        assert len(asked) <= 10 / 2 + 2
    finally:
        fleet.stop()


def test_a_replica_request_must_be_signed_for_that_replica_in_time(origin: Origin, tmp_path: Path) -> None:
    """The secret itself never travels: a signature names the method, the replica, the path and the time."""
    fleet = start_fleet(tmp_path, origin, round_robin=True, count=2)
    try:
        image = origin.images[0]
        assert pull(fleet.replicas[0].url, image)
        fleet.replicas[0].wait_idle()
        digest = next(iter(image.blobs))
        path = f"/_fleet/blobs/{digest}"
        here, other = fleet.replicas[0].url, fleet.replicas[1].url
        assert httpx.get(here + path).status_code == 403
        assert httpx.get(here + path, headers={"X-Mirror-Fleet-Secret": SECRET}).status_code == 403
        for wrong in (
            sign("not-the-fleet-secret-0123", "GET", here, path),
            sign(SECRET, "GET", other, path),  # made for another replica: useless here
            sign(SECRET, "GET", here, "/_fleet/blobs/sha256:" + "0" * 64),
            sign(SECRET, "GET", here, path, now=time.time() - 120),
        ):
            assert httpx.get(here + path, headers={AUTH_HEADER: wrong}).status_code == 403, wrong
        good = httpx.get(here + path, headers={AUTH_HEADER: sign(SECRET, "GET", here, path)})
        assert good.status_code == 200 and good.content == image.blobs[digest]
    finally:
        fleet.stop()


def test_a_private_blob_held_by_another_replica_is_not_read_through_a_public_name(
    origin: Origin, tmp_path: Path
) -> None:
    """bob's private layer, pulled through replica 0, once came out of replica 1 under library/ to anyone."""
    with Pusher(origin.registry.url) as pusher:
        secret = pusher.image("team/secret", "1", [1 << 20, 4096], seed=377)
    users = htpasswd(tmp_path / "users.htpasswd", {"bob": "bob-pass"})
    rules = (
        f'[auth]\nhtpasswd = "{users}"\n[[auth.rules]]\nusers = ["*"]\nrepositories = ["docker.io/library/*"]\n'
        '[[auth.rules]]\nusers = ["bob"]\nrepositories = ["docker.io/team/**"]\n'
    )
    fleet = start_fleet(tmp_path, origin, round_robin=True, count=2, cache=rules)
    try:
        accept = {"Accept": ", ".join(ALL_MANIFESTS)}
        replica0, replica1 = fleet.replicas
        assert httpx.get(
            f"{replica0.url}/v2/team/secret/manifests/1", headers=accept, auth=("bob", "bob-pass")
        ).is_success
        for digest in secret.blobs:
            assert httpx.get(f"{replica0.url}/v2/team/secret/blobs/{digest}", auth=("bob", "bob-pass")).is_success
        replica0.wait_idle()
        for digest in secret.blobs:
            leaked = httpx.get(f"{replica1.url}/v2/library/fleet0/blobs/{digest}")
            assert leaked.status_code == 404, leaked.status_code
            assert leaked.json()["errors"][0]["code"] == "BLOB_UNKNOWN"
        public = next(iter(origin.images[0].blobs))
        assert httpx.get(f"{replica1.url}/v2/library/fleet0/blobs/{public}").status_code == 200
    finally:
        fleet.stop()


def test_a_peer_url_planted_in_redis_is_never_asked(origin: Origin, tmp_path: Path) -> None:
    """Anyone who can write to Redis can name a replica; it must be in [fleet] peers to be asked."""
    planted = FakeUpstream()  # stands in for a listener an attacker runs, on another loopback address
    planted.start()
    fleet = start_fleet(tmp_path, origin, round_robin=True, count=2, fleet_config='peers = ["127.0.0.1/32"]')
    try:
        image = origin.images[1]
        rogue = f"http://127.0.0.2:{planted.port}"
        client = redis.Redis.from_url(fleet.redis.url, decode_responses=True)
        record = json.dumps({"peer_url": rogue, "started": time.time(), "seen": time.time()})
        client.sadd("mirror:members", rogue)
        client.set(f"mirror:member:{rogue}", record, px=60_000)
        for digest in image.all_blobs():
            client.sadd(f"mirror:holders:{digest}", rogue)
        assert pull(fleet.replicas[0].url, image)
        assert planted.authorizations == [] and sum(planted.requests.values()) == 0
        assert "outside [fleet] peers" in fleet.replicas[0].log_path.read_text()
    finally:
        fleet.stop()
        planted.stop()
