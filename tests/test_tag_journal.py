"""The tag journal: what every tag pointed to and when, kept in the cache's format (3), shown by
`mirror history` and `/api/history`; a tag the upstream moves is logged and counted."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from support import MirrorProcess, Pusher, Registry, sha256

from mirror.cache.directory import CacheDirectory
from mirror.cache.layout import FORMAT_VERSION, TagEntry, journal_key

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def manifest(n: int) -> bytes:
    body = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": [], "annotations": {"n": str(n)}}
    return json.dumps(body).encode()


@dataclass
class Repository:
    """This test's own repository of the session registry, where a push moves a tag as on any registry."""

    registry: Registry
    name: str = field(default_factory=lambda: f"library/journal-{uuid.uuid4().hex[:8]}")

    @property
    def short(self) -> str:
        return self.name.removeprefix("library/")  # as Docker names it

    def push(self, tag: str, seed: int) -> str:
        """A small image of `seed` as `tag`; its manifest's digest."""
        with Pusher(self.registry.url) as pusher:
            return pusher.image(self.name, tag, [512], seed=seed, oci=True).digest


@pytest.fixture
def repository(registry: Registry) -> Repository:
    return Repository(registry)


def pull(mirror: MirrorProcess, repository: str, tag: str) -> httpx.Response:
    response = httpx.get(f"{mirror.url}/v2/{repository}/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
    assert response.status_code == 200, response.text
    return response


def history(mirror: MirrorProcess, image: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "mirror", "history", image, "--config", str(mirror.root / "config.toml")]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def manifest_gets(registry: Registry, mark: int, tag: str) -> int:
    return sum(
        1 for method, path, _ in registry.requests_since(mark) if method == "GET" and path.endswith(f"/manifests/{tag}")
    )


def test_a_moved_tag_shows_both_digests_with_times_and_is_counted(
    tmp_path: Path, registry: Registry, repository: Repository
) -> None:
    name, short = repository.name, repository.short
    first = repository.push("v1", 101)
    repository.push("v2", 102)
    mirror = MirrorProcess(tmp_path / "mirror", {"docker.io": registry.url}, extra_config='tag_ttl = "1s"')
    mirror.start()
    try:
        started = time.time()
        assert pull(mirror, name, "v1").headers["docker-content-digest"] == first
        pull(mirror, name, "v2")
        time.sleep(1.2)
        second = repository.push("v1", 103)  # the upstream repoints v1
        assert pull(mirror, name, "v1").headers["docker-content-digest"] == second
        time.sleep(1.2)
        pull(mirror, name, "v1")  # revalidated: the same digest, seen again
        stats = mirror.stats()
        rows = httpx.get(f"{mirror.url}/api/history", params={"image": f"{short}:v1"}, auth=mirror.admin).json()
        everything = httpx.get(f"{mirror.url}/api/history", params={"image": short}, auth=mirror.admin).json()
        refused = httpx.get(
            f"{mirror.url}/api/history", params={"image": f"{short}@sha256:{'a' * 64}"}, auth=mirror.admin
        )
        table = history(mirror, f"{short}:v1")
        listed = httpx.get(f"{mirror.url}/api/images/{name}", auth=mirror.admin).json()
        log = mirror.log_path.read_text()
        metrics = httpx.get(f"{mirror.url}/metrics", auth=mirror.admin).text
    finally:
        mirror.stop()
    assert [(r["tag"], r["digest"]) for r in rows] == [("v1", first), ("v1", second)]
    assert rows[0]["first_seen"] <= rows[0]["last_seen"] < rows[1]["first_seen"] < rows[1]["last_seen"]
    assert rows[0]["first_seen"] >= time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started - 1))
    assert [r["tag"] for r in everything] == ["v1", "v1", "v2"]
    assert {r["tag"]: r["moves"] for r in listed} == {"v1": 1, "v2": 0}  # the dashboard's Moved column
    assert refused.status_code == 400 and refused.json()["errors"][0]["code"] == "NAME_INVALID"
    assert table.returncode == 0, table.stderr
    assert first in table.stdout and second in table.stdout and "v1: 1 digest change seen" in table.stdout
    assert f"upstream docker.io moved {name}:v1 from {first} to {second}" in log
    assert stats["upstreams"]["docker.io"]["tag_moves"] == 1
    assert 'mirror_upstream_tag_moves_total{upstream="docker.io"} 1' in metrics


def test_a_format_2_cache_gets_a_journal_from_its_tags(tmp_path: Path) -> None:
    """As a cache written before the journal existed: its tags' digests become the journal's first rows."""
    root = tmp_path / "cache"
    digests = [sha256(manifest(n)) for n in (1, 2)]
    cache = CacheDirectory.open(root)
    try:
        entries = {
            "oci": TagEntry(digests[0], OCI_MANIFEST, 1_700_000_000.0),
            "all": TagEntry(digests[1], OCI_MANIFEST, 1_700_000_500.0),
        }
        cache.metadata.set_tag("docker.io", "library/app", "v1", entries)
        cache.metadata.delete_raw(journal_key("docker.io", "library/app", "v1"))
    finally:
        cache.close()
    (root / "FORMAT").write_text("2\n")

    cache = CacheDirectory.open(root)
    try:
        journal = cache.metadata.journal("docker.io", "library/app", "v1")
    finally:
        cache.close()
    assert (root / "FORMAT").read_text().strip() == str(FORMAT_VERSION) == "3"
    assert [(s.digest, s.first_seen, s.last_seen) for s in journal] == [
        (digests[0], 1_700_000_000.0, 1_700_000_000.0),
        (digests[1], 1_700_000_500.0, 1_700_000_500.0),
    ]


def test_a_cache_of_a_newer_format_is_refused_by_name(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    CacheDirectory.open(root).close()
    (root / "FORMAT").write_text(f"{FORMAT_VERSION + 1}\n")
    command = [sys.executable, "-m", "mirror", "history", "app:v1"]
    config = tmp_path / "config.toml"
    config.write_text(f'[cache]\ndirectory = "{root}"\n')
    result = subprocess.run([*command, "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert f"format {FORMAT_VERSION + 1}, written by a newer mirror" in result.stderr


def test_an_immutable_tag_keeps_its_digest_until_accepted(
    tmp_path: Path, registry: Registry, repository: Repository
) -> None:
    name, short = repository.name, repository.short
    first = repository.push("v1", 201)
    repository.push("latest", 205)
    mirror = MirrorProcess(
        tmp_path / "mirror",
        {"docker.io": registry.url},
        extra_config='tag_ttl = "1s"',
        upstream_config='immutable_tags = ["v*", "*.*.*"]',
    )
    mirror.start()
    try:
        pull(mirror, name, "v1")
        pull(mirror, name, "latest")
        second = repository.push("v1", 202)  # the upstream repoints both
        latest = repository.push("latest", 206)
        time.sleep(1.2)
        kept = pull(mirror, name, "v1")
        assert pull(mirror, name, "latest").headers["docker-content-digest"] == latest  # a mutable tag follows
        time.sleep(1.2)
        mark = registry.mark()
        again = pull(mirror, name, "v1")
        gets_again = manifest_gets(registry, mark, "v1")
        moves = mirror.stats()["upstreams"]["docker.io"]["tag_moves"]
        config = str(mirror.root / "config.toml")
        command = [sys.executable, "-m", "mirror", "tag", "accept", f"{short}:v1", "--config", config]
        accepted = subprocess.run(command, capture_output=True, text=True, timeout=60)
        taken = pull(mirror, name, "v1")
        log = mirror.log_path.read_text()
    finally:
        mirror.stop()
    assert kept.headers["docker-content-digest"] == first and kept.headers["x-cache"] == "HIT"
    assert again.headers["docker-content-digest"] == first
    assert gets_again == 0  # the move is journalled: a HEAD tells it again, no GET
    assert moves == 2  # v1 once (not at every revalidation) and latest once
    assert f"moved {name}:v1 from {first} to {second}; immutable_tags 'v*' keeps {first}" in log
    assert accepted.returncode == 0, accepted.stderr
    assert f"{short}:v1: serves {second} from now on" in accepted.stdout
    assert taken.headers["docker-content-digest"] == second
