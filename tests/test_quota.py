"""Docker Hub's pull quota in view: its rate-limit headers as gauges, manifest GETs counted, per upstream.

The upstream is the token-auth Docker Hub look-alike (distribution, a token issuer, a CDN),
told to send Docker Hub's `ratelimit-*` headers with every answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from egress_parts import private_names
from prometheus_client.parser import text_string_to_metric_families
from support import ALL_MANIFESTS, Image, MirrorProcess, Registry, seed_standard_images
from test_pull import skopeo_copy
from token_upstream import StaticCDN, TokenIssuer, enable_token_auth

from mirror.stats import UpstreamStats


def test_odd_quota_headers_are_ignored() -> None:
    upstream = UpstreamStats()
    upstream.saw_ratelimit("²;w=3", "-1;w=x", "203.0.113.7")  # "²".isdigit() is True; int("²") raises
    assert (upstream.ratelimit_limit, upstream.ratelimit_remaining, upstream.ratelimit_window_seconds) == (
        None,
        None,
        3,
    )
    upstream.saw_ratelimit("100", None, None)
    assert upstream.ratelimit_limit == 100 and upstream.ratelimit_window_seconds is None


def quota_headers(remaining: int) -> dict[str, str]:
    return {
        "RateLimit-Limit": "100;w=21600",
        "RateLimit-Remaining": f"{remaining};w=21600",
        "Docker-RateLimit-Source": "203.0.113.7",
    }


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Registry, dict[str, Image]]]:
    root = tmp_path_factory.mktemp("hub")
    registry = Registry(root / "registry").start()
    issuer = TokenIssuer(root / "issuer")
    cdn = StaticCDN(registry.root / "data")
    try:
        images = seed_standard_images(registry.url)
        registry.headers = quota_headers(76)
        enable_token_auth(registry, issuer, cdn)
        yield registry, images
    finally:
        for part in (registry, issuer, cdn):
            part.stop()


def samples(mirror: MirrorProcess) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample of /metrics, parsed by Prometheus' own text-format parser, by family."""
    text = httpx.get(f"{mirror.url}/metrics").text
    return {
        family.name: [(sample.labels, sample.value) for sample in family.samples]
        for family in text_string_to_metric_families(text)
    }


def test_quota_gauges_follow_the_upstream(
    hub: tuple[Registry, dict[str, Image]], tmp_path: Path, started_mirror: MirrorProcess
) -> None:
    registry, images = hub
    mirror = started_mirror
    mark = registry.mark()
    skopeo_copy(mirror, "library/demo:latest", tmp_path / "demo")

    quota = mirror.stats()["upstreams"]["docker.io"]
    assert quota["ratelimit_limit"] == 100
    assert quota["ratelimit_remaining"] == 76
    assert quota["ratelimit_window_seconds"] == 21600
    assert quota["ratelimit_source"] == "203.0.113.7"

    # The upstream's count goes down: the gauge follows on the next answer.
    registry.stop()
    registry.headers = quota_headers(75)
    registry.start()
    response = httpx.get(
        f"{mirror.url}/v2/library/multi/manifests/latest", headers={"Accept": ", ".join(ALL_MANIFESTS)}
    )
    assert response.status_code == 200

    metrics = samples(mirror)
    docker_io = {"upstream": "docker.io"}
    assert metrics["mirror_upstream_ratelimit_remaining"] == [(docker_io, 75.0)]
    assert metrics["mirror_upstream_ratelimit_limit"] == [(docker_io, 100.0)]
    assert metrics["mirror_upstream_ratelimit_window_seconds"] == [(docker_io, 21600.0)]
    assert metrics["mirror_upstream_ratelimit_source_info"] == [(docker_io | {"source": "203.0.113.7"}, 1.0)]

    # What Docker Hub counts as pulls: the manifest GETs it answered (HEADs and 401s are free).
    pulls = [
        path
        for method, path, status in registry.requests()[mark:]
        if method == "GET" and "/manifests/" in path and status == 200
    ]
    assert len(pulls) >= 2
    assert metrics["mirror_upstream_manifest_gets"] == [(docker_io, float(len(pulls)))]

    # Every metric about an upstream carries the label; the totals in /stats are their sums.
    upstream_families = [name for name in metrics if name.startswith(("mirror_upstream", "mirror_bytes_fetched"))]
    assert len(upstream_families) >= 8
    for name in upstream_families:
        assert all(labels.get("upstream") == "docker.io" for labels, _ in metrics[name]), name
    stats = mirror.stats()
    assert metrics["mirror_upstream_requests"] == [(docker_io, float(stats["upstream_requests"]))]
    assert metrics["mirror_bytes_fetched_from_upstream"] == [(docker_io, float(stats["bytes_fetched_from_upstream"]))]
    assert stats["bytes_fetched_from_upstream"] >= sum(len(b) for b in images["demo"].blobs.values())

    dashboard = httpx.get(f"{mirror.url}/api/dashboard").json()
    row = dashboard["upstreams"][0]
    assert row["quota"]["remaining"] == 75 and row["quota"]["source"] == "203.0.113.7"
    assert row["manifest_gets"] == len(pulls)


@pytest.fixture
def started_mirror(hub: tuple[Registry, dict[str, Image]], tmp_path: Path) -> Iterator[MirrorProcess]:
    process = MirrorProcess(tmp_path / "mirror", {"docker.io": hub[0].url}).start()
    try:
        yield process
    finally:
        process.stop()


def test_anonymous_docker_hub_is_warned_about(
    hub: tuple[Registry, dict[str, Image]], started_mirror: MirrorProcess, tmp_path: Path
) -> None:
    """Only for Docker Hub itself, asked: not for an internal registry named docker.io, nor offline.

    The mirror set up for Docker Hub runs where no name resolves (no DNS server): it asks nothing.
    """
    names = private_names(tmp_path / "names", {})
    for offline, expected in ((False, 1), (True, 0)):
        hub_mirror = MirrorProcess(
            tmp_path / f"hub-{offline}",
            {"docker.io": "https://registry-1.docker.io"},
            wrapper=names,
            args=["--offline"] if offline else [],
        ).start()
        try:
            log = hub_mirror.log_path.read_text()
            assert log.count("docker.io has no credentials") == expected, log
            warnings = httpx.get(f"{hub_mirror.url}/api/dashboard").json()["warnings"]
            assert len(warnings) == expected and all("quota" in w for w in warnings)
            assert ("offline ([server] offline or --offline): no upstream is asked" in log) is offline
        finally:
            hub_mirror.stop()

    internal = started_mirror  # docker.io is a registry of the site's own
    assert "no credentials" not in internal.log_path.read_text()
    assert httpx.get(f"{internal.url}/api/dashboard").json()["warnings"] == []

    with_account = MirrorProcess(
        tmp_path / "with-account",
        {"docker.io": "https://registry-1.docker.io"},
        credentials={"docker.io": ("ci", "token")},
        wrapper=names,
    ).start()
    try:
        assert httpx.get(f"{with_account.url}/api/dashboard").json()["warnings"] == []
        assert "no credentials" not in with_account.log_path.read_text()
    finally:
        with_account.stop()
