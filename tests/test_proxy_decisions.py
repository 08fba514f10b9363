"""The proxy's decision table, in process: each answer's cache status (HIT, MISS, REVALIDATED,
STALE) and what it cost the upstream, alone and in a fleet of two replicas sharing a real Redis.

The parts are the real ones (the composition root's `Mirror`, its cache directory, the session's
docker-registry, redis-server), but no `mirror serve` is started: a decision costs a request,
not a process. As CNCF distribution tests its proxy stores.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from fake_upstream import FakeUpstream
from fleet_parts import SECRET, RedisServer
from support import Image, Registry

from mirror.composition import Mirror
from mirror.config import load
from mirror.fleet import keys
from mirror.proxy import CacheStatus, ManifestAnswer
from mirror.registry.errors import ManifestUnknown, RegistryError
from mirror.registry.mediatypes import ACCEPT_ALL
from mirror.registry.reference import parse_digest

T = TypeVar("T")


def build(root: Path, upstream_url: str, *, redis: RedisServer | None = None, extra: str = "") -> Mirror:
    """A mirror's parts as `mirror serve` builds them, without the server."""
    root.mkdir(parents=True)
    text = f'[cache]\ndirectory = "{root / "cache"}"\n{extra}\n[upstreams."docker.io"]\nurl = "{upstream_url}"\n'
    if redis is not None:
        text += f'[fleet]\nredis = "{redis.url}"\npeer_url = "http://127.0.0.1:1"\nsecret = "{SECRET}"\n'
    (root / "config.toml").write_text(text)
    return Mirror(load(root / "config.toml"))


def run(mirrors: list[Mirror], work: Callable[[], Awaitable[T]]) -> T:
    """`work` in an event loop, then every mirror closed in it (their clients belong to the loop)."""

    async def main() -> T:
        try:
            return await work()
        finally:
            for mirror in mirrors:
                await mirror.close()

    return asyncio.run(main())


async def ask(mirror: Mirror, repository: str, reference: str) -> ManifestAnswer:
    upstream = mirror.upstream_for(None)
    target = parse_digest(reference) if reference.startswith("sha256:") else reference
    return await mirror.proxy.manifest(upstream, repository, target, [ACCEPT_ALL])


def manifest_requests(registry: Registry, mark: int) -> list[str]:
    return [method for method, path, _ in registry.requests_since(mark) if "/manifests/" in path]


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


def test_miss_then_hit_then_revalidated(tmp_path: Path, registry: Registry, images: dict[str, Image]) -> None:
    image = images["demo"]
    mirror = build(tmp_path / "a", registry.url)

    async def work() -> list[tuple[CacheStatus, list[str]]]:
        seen = []
        for step in ("cold", "warm", "expired", "by digest"):
            if step == "expired":
                mirror.proxy.reconfigure(tag_ttl=0.0, enforce_links=False)  # as a reload to tag_ttl = 0 does
            mark = registry.mark()
            reference = image.digest if step == "by digest" else image.tag
            answer = await ask(mirror, image.repository, reference)
            assert answer.manifest.body == image.manifest
            seen.append((answer.cache_status, manifest_requests(registry, mark)))
        return seen

    assert run([mirror], work) == [
        (CacheStatus.MISS, ["GET"]),
        (CacheStatus.HIT, []),
        (CacheStatus.REVALIDATED, ["HEAD"]),  # the same digest: the cached body, no GET
        (CacheStatus.HIT, []),  # by digest: immutable, never revalidated
    ]
    assert (mirror.stats.manifest_misses, mirror.stats.manifest_hits) == (1, 3)


def test_a_missing_tag_is_asked_once_within_negative_ttl(
    tmp_path: Path, registry: Registry, images: dict[str, Image]
) -> None:
    mirror = build(tmp_path / "a", registry.url)

    async def work() -> list[int]:
        statuses = []
        mark = registry.mark()
        for _ in range(3):
            with pytest.raises(RegistryError) as raised:
                await ask(mirror, "library/demo", "no-such-tag")
            statuses.append(raised.value.status)
        assert manifest_requests(registry, mark) == ["GET"]
        return statuses

    assert run([mirror], work) == [404, 404, 404]
    assert mirror.stats.negative_hits == 2


def test_a_failing_upstream_gets_the_cached_answer_stale(tmp_path: Path, fake_upstream: FakeUpstream) -> None:
    body = b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "layers": []}'
    fake_upstream.manifests["v1"] = (body, "application/vnd.oci.image.manifest.v1+json")
    mirror = build(tmp_path / "a", fake_upstream.url)

    async def work() -> list[CacheStatus]:
        seen = [(await ask(mirror, "library/app", "v1")).cache_status]
        mirror.proxy.reconfigure(tag_ttl=0.0, enforce_links=False)
        fake_upstream.manifest_error = (503, {})
        answer = await ask(mirror, "library/app", "v1")
        assert answer.manifest.body == body and answer.age is not None
        seen.append(answer.cache_status)
        # A tag the upstream deleted is not served from the cache (keep_deleted_tags is off):
        fake_upstream.manifest_error = None
        del fake_upstream.manifests["v1"]
        with pytest.raises(ManifestUnknown):
            await ask(mirror, "library/app", "v1")
        return seen

    assert run([mirror], work) == [CacheStatus.MISS, CacheStatus.STALE]
    assert mirror.stats.manifest_stale == 1


def test_a_fleet_asks_the_upstream_once_for_a_tag(
    tmp_path: Path, registry: Registry, images: dict[str, Image], redis: RedisServer
) -> None:
    """Two replicas asked at once: one fetches, the other waits for its answer through Redis
    (which it does not hold: the shared manifest, checked against its digest)."""
    image = images["oci"]
    a = build(tmp_path / "a", registry.url, redis=redis)
    b = build(tmp_path / "b", registry.url, redis=redis)

    async def work() -> tuple[list[CacheStatus], list[str], CacheStatus, list[str]]:
        mark = registry.mark()
        answers = await asyncio.gather(ask(a, image.repository, image.tag), ask(b, image.repository, image.tag))
        assert all(answer.manifest.body == image.manifest for answer in answers)
        first = manifest_requests(registry, mark)
        mark = registry.mark()
        again = await ask(b, image.repository, image.digest)  # by digest: held now, or shared
        return (
            sorted(answer.cache_status for answer in answers),
            first,
            again.cache_status,
            manifest_requests(registry, mark),
        )

    statuses, first, again, later = run([a, b], work)
    assert statuses == sorted([CacheStatus.MISS, CacheStatus.HIT])
    assert first == ["GET"]
    assert (again, later) == (CacheStatus.HIT, [])


def test_a_replica_alone_answers_at_once_when_redis_is_gone(
    tmp_path: Path, registry: Registry, images: dict[str, Image], redis: RedisServer
) -> None:
    """Redis down: the coordination answers "on your own" (fetch it), never waits for the others."""
    image = images["demo"]
    a = build(tmp_path / "a", registry.url, redis=redis)
    redis.stop()

    async def work() -> tuple[CacheStatus, float]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        answer = await ask(a, image.repository, image.tag)
        return answer.cache_status, loop.time() - started

    status, took = run([a], work)
    assert status == CacheStatus.MISS
    assert took < 5.0  # less than the fleet's wait: nobody was waited for


def test_a_fleet_revalidates_once_and_serves_stale_while_another_replica_asks(
    tmp_path: Path, registry: Registry, images: dict[str, Image], redis: RedisServer
) -> None:
    image = images["list"]
    # A replica that asks the upstream for a tag has it for tag_ttl, fleet-wide: short here.
    a = build(tmp_path / "a", registry.url, redis=redis, extra='tag_ttl = "1s"')
    b = build(tmp_path / "b", registry.url, redis=redis, extra='tag_ttl = "1s"')
    tag = image.tag

    async def work() -> list[tuple[CacheStatus, list[str]]]:
        seen = []
        for step in ("a cold", "b from the fleet", "b expired", "b expired while a asks"):
            mirror = a if step == "a cold" else b
            if step == "b expired":
                await asyncio.sleep(1.2)  # a's claim on the tag is over
                b.proxy.reconfigure(tag_ttl=0.0, enforce_links=False)
            if step == "b expired while a asks":
                # Replica a has the tag's revalidation (it asks the upstream now, and says nothing in time):
                assert a.fleet is not None
                await a.fleet.claim(keys.tag_refresh("docker.io", image.repository, tag), 60)
            mark = registry.mark()
            answer = await ask(mirror, image.repository, tag)
            assert answer.manifest.body == image.manifest
            seen.append((answer.cache_status, manifest_requests(registry, mark)))
        return seen

    assert run([a, b], work) == [
        (CacheStatus.MISS, ["GET"]),
        (CacheStatus.HIT, []),  # the tag's answer and its manifest from Redis, checked, then kept
        (CacheStatus.REVALIDATED, ["HEAD"]),
        (CacheStatus.STALE, []),  # waited for a's answer; none came: the one held, said stale
    ]
