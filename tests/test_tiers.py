"""Tiers and islands: upstreams below a path or with a prefix, mirrors of mirrors, offline mode.

Real parts: distribution registries, nginx in front of one (an API below a path, as Artifactory
and Nexus serve it), the token issuer, and mirror processes chained edge → regional → registry.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from pacing import PacedUpstream
from support import Image, MirrorProcess, Pusher, Registry
from test_access import htpasswd
from test_pull import skopeo_copy, verify_dir_copy
from test_spec import agree, read_endpoints
from token_upstream import TokenIssuer, enable_token_auth

ARTIFACTORY_PATH = "/artifactory/api/docker/docker-remote"


def blob_gets(registry: Registry, mark: int) -> Counter[str]:
    return Counter(
        path.rsplit("/", 1)[1]
        for method, path, _ in registry.requests_since(mark)
        if method == "GET" and "/blobs/sha256:" in path
    )


def manifest_gets(registry: Registry, mark: int) -> list[str]:
    return [path for method, path, _ in registry.requests_since(mark) if method == "GET" and "/manifests/" in path]


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Registry, Image]]:
    """A registry of its own, with an image whose largest layer is 4 MiB."""
    registry = Registry(tmp_path_factory.mktemp("origin")).start()
    try:
        with Pusher(registry.url) as pusher:
            image = pusher.image("library/tiered", "latest", [4 * 1024 * 1024, 256 * 1024, 4096], seed=21)
            pusher.image("library/second", "latest", [512 * 1024, 4096], seed=22)
        yield registry, image
    finally:
        registry.stop()


def start_all(*mirrors: MirrorProcess) -> list[MirrorProcess]:
    started: list[MirrorProcess] = []
    try:
        for mirror in mirrors:
            started.append(mirror.start())
    except BaseException:
        stop_all(started)
        raise
    return started


def stop_all(mirrors: list[MirrorProcess]) -> None:
    for mirror in mirrors:
        mirror.stop()


def pull_concurrently(mirror: MirrorProcess, reference: str, image: Image, directory: Path, clients: int) -> None:
    """`clients` skopeo pulls at once, each checked byte for byte."""
    outs = [directory / f"pull-{n}" for n in range(clients)]
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda out: skopeo_copy(mirror, reference, out), outs))
    for out in outs:
        verify_dir_copy(out, image)


def edge_of(root: Path, registry: Registry, *regionals: MirrorProcess, keys: str = "") -> MirrorProcess:
    mirrors = ", ".join(f'"{regional.url}"' for regional in regionals)
    return MirrorProcess(
        root, {"docker.io": registry.url}, upstream_keys={"docker.io": f"mirrors = [{mirrors}]\n{keys}"}
    )


# Upstreams below a path, and with a repository prefix


def test_an_upstream_below_a_path(registry: Registry, images: dict[str, Image], tmp_path: Path) -> None:
    with PacedUpstream(registry, tmp_path / "nginx", rate="0", path=ARTIFACTORY_PATH) as artifactory:
        mirror = MirrorProcess(tmp_path / "m", {"docker.io": artifactory.url}).start()
        try:
            skopeo_copy(mirror, "library/multi:latest", tmp_path / "pull")
            verify_dir_copy(tmp_path / "pull", images["list"])
            first = httpx.get(f"{mirror.url}/v2/library/multi/tags/list", params={"n": "2"})
            assert first.json() == {"name": "library/multi", "tags": ["amd64", "arm64"]}
            assert first.headers["link"] == '</v2/library/multi/tags/list?n=2&last=arm64>; rel="next"'
        finally:
            mirror.stop()
        uris = [request.uri for request in artifactory.requests()]
        assert uris and all(uri.startswith(ARTIFACTORY_PATH + "/v2/") for uri in uris), uris


def test_a_repository_prefix_with_token_auth(tmp_path: Path) -> None:
    """Harbor's proxy project: `alpine` is `dockerhub-proxy/library/alpine` there, and tokens are scoped so."""
    registry = Registry(tmp_path / "harbor").start()
    issuer = TokenIssuer(tmp_path / "issuer")
    try:
        with Pusher(registry.url) as pusher:
            image = pusher.image("dockerhub-proxy/library/app", "1.0", [64 * 1024, 4096], seed=23)
        enable_token_auth(registry, issuer, None)
        keys = {"docker.io": 'repository_prefix = "dockerhub-proxy"'}
        mirror = MirrorProcess(tmp_path / "m", {"docker.io": registry.url}, upstream_keys=keys).start()
        try:
            skopeo_copy(mirror, "app:1.0", tmp_path / "pull")
            verify_dir_copy(tmp_path / "pull", image)
            tags = httpx.get(f"{mirror.url}/v2/library/app/tags/list")
            assert tags.json() == {"name": "library/app", "tags": ["1.0"]}, "the client never sees the prefix"
        finally:
            mirror.stop()
        scopes = {path.split("scope=")[1].split("&")[0] for path in (r.path for r in issuer.requests)}
        assert scopes == {"repository%3Adockerhub-proxy%2Flibrary%2Fapp%3Apull"}
    finally:
        issuer.stop()
        registry.stop()


# Two tiers


def test_sixteen_cold_clients_on_an_edge_make_one_download_per_blob(
    origin: tuple[Registry, Image], tmp_path: Path
) -> None:
    registry, image = origin
    regional = MirrorProcess(tmp_path / "regional", {"docker.io": registry.url})
    edge = edge_of(tmp_path / "edge", registry, regional)
    started = start_all(regional, edge)
    try:
        mark = registry.mark()
        pull_concurrently(edge, "library/tiered:latest", image, tmp_path, 16)
        edge.wait_idle()
        regional.wait_idle()
        gets = blob_gets(registry, mark)
        assert gets == Counter(dict.fromkeys(image.all_blobs(), 1)), gets
        assert len(manifest_gets(registry, mark)) == 1
        edge_requests = edge.stats()["upstreams"]["docker.io"]["requests"]
        print(f"16 clients on the edge: registry {sum(gets.values())} blob GETs, edge → regional {edge_requests}")
    finally:
        stop_all(started)


def test_a_large_blob_costs_the_registry_its_size_once_through_two_tiers(
    origin: tuple[Registry, Image], tmp_path: Path
) -> None:
    """Large enough for parallel ranges at every tier: the regional mirror fetches them from the
    registry; the edge asks it for the whole blob, whose ranges would each miss its download."""
    registry, _ = origin
    with Pusher(registry.url) as pusher:
        image = pusher.image("library/big", "latest", [24 * 1024 * 1024, 4096], seed=25)
    layer = max(image.blobs, key=lambda digest: len(image.blobs[digest]))
    engine = 'parallel_threshold = "4MiB"\nmax_connections_per_blob = 4'
    with PacedUpstream(registry, tmp_path / "nginx", rate="16m") as paced:
        regional = MirrorProcess(tmp_path / "regional", {"docker.io": paced.url}, upstream_config=engine)
        edge = edge_of(tmp_path / "edge", registry, regional, keys="mirrors_only = true")
        edge.upstream_config = 'parallel_threshold = "8MiB"\nmax_connections_per_blob = 3'  # not aligned with it
        started = start_all(regional, edge)
        try:
            pull_concurrently(edge, "library/big:latest", image, tmp_path, 4)
            regional.wait_idle()
        finally:
            stop_all(started)
        gets = paced.blob_gets(layer)
        assert len(gets) > 1, "the regional mirror fetched it in ranges"
        assert paced.body_bytes(layer) == len(image.blobs[layer]), [(r.range, r.body_bytes) for r in gets]


def test_through_two_tiers_every_endpoint_answers_as_the_registry_does(
    registry: Registry, images: dict[str, Image], tmp_path: Path
) -> None:
    """HEAD of an uncached blob, Range, a tag the registry does not know: as the registry says."""
    regional = MirrorProcess(tmp_path / "regional", {"docker.io": registry.url})
    edge = edge_of(tmp_path / "edge", registry, regional, keys="mirrors_only = true")
    started = start_all(regional, edge)
    try:
        for method in ("HEAD", "GET"):
            for what, path, headers in read_endpoints(images):
                if method == "HEAD" and ("Range" in headers or "/tags/list" in path):
                    continue
                theirs = httpx.request(method, registry.url + path, headers=headers)
                agree(httpx.request(method, edge.url + path, headers=headers), theirs, f"{what} through two tiers")
        assert regional.stats()["requests"] > 0, "the edge asked the regional mirror"
    finally:
        stop_all(started)


def test_an_edge_serves_cached_tags_while_its_regional_mirror_is_down(
    origin: tuple[Registry, Image], tmp_path: Path
) -> None:
    registry, image = origin
    regional = MirrorProcess(tmp_path / "regional", {"docker.io": registry.url})
    edge = edge_of(tmp_path / "edge", registry, regional, keys="mirrors_only = true")
    edge.extra_config = 'tag_ttl = "1s"'
    started = start_all(regional, edge)
    try:
        skopeo_copy(edge, "library/tiered:latest", tmp_path / "warm")
        edge.wait_idle()
        regional.stop()
        time.sleep(1.2)
        url = f"{edge.url}/v2/library/tiered/manifests/latest"
        answer = httpx.get(url, headers={"Accept": image.media_type})
        assert answer.status_code == 200 and answer.headers["x-cache"] == "STALE"
        skopeo_copy(edge, "library/tiered:latest", tmp_path / "stale")
        verify_dir_copy(tmp_path / "stale", image)
        uncached = httpx.get(f"{edge.url}/v2/library/second/manifests/latest")
        assert uncached.status_code == 503 and uncached.json()["errors"][0]["code"] == "UNAVAILABLE"
    finally:
        stop_all(started)


def test_a_stale_answer_stays_stale_at_the_edge(tmp_path: Path) -> None:
    """The regional mirror's registry is down: its STALE (with Age) is not made fresh again at the edge."""
    registry = Registry(tmp_path / "registry").start()
    try:
        with Pusher(registry.url) as pusher:
            image = pusher.image("library/app", "latest", [4096], seed=24)
        regional = MirrorProcess(tmp_path / "regional", {"docker.io": registry.url}, extra_config='tag_ttl = "1s"')
        edge = edge_of(tmp_path / "edge", registry, regional, keys="mirrors_only = true")
        edge.extra_config = 'tag_ttl = "1s"'
        started = start_all(regional, edge)
        try:
            url = f"{edge.url}/v2/library/app/manifests/latest"
            accept = {"Accept": image.media_type}
            assert httpx.get(url, headers=accept).headers["x-cache"] == "MISS"
            registry.stop()
            time.sleep(1.2)
            for _ in range(2):  # the second is not answered as fresh from the first
                answer = httpx.get(url, headers=accept)
                assert answer.status_code == 200 and answer.headers["x-cache"] == "STALE"
                assert int(answer.headers["age"]) >= 1
        finally:
            stop_all(started)
    finally:
        registry.stop()


def test_the_registry_quota_reaches_the_edge(tmp_path: Path) -> None:
    """Docker Hub's ratelimit headers, seen by the regional mirror, are passed on to the edge."""
    quota = {"ratelimit-limit": "100;w=21600", "ratelimit-remaining": "76;w=21600"}
    registry = Registry(tmp_path / "hub", headers=quota).start()
    try:
        with Pusher(registry.url) as pusher:
            image = pusher.image("library/app", "latest", [4096], seed=26)
        regional = MirrorProcess(tmp_path / "regional", {"docker.io": registry.url})
        edge = edge_of(tmp_path / "edge", registry, regional, keys="mirrors_only = true")
        started = start_all(regional, edge)
        try:
            answer = httpx.get(f"{edge.url}/v2/library/app/manifests/latest", headers={"Accept": image.media_type})
            assert answer.headers["ratelimit-remaining"] == "76;w=21600"
            seen = edge.stats()["upstreams"]["docker.io"]
            assert (seen["ratelimit_limit"], seen["ratelimit_remaining"]) == (100, 76)
        finally:
            stop_all(started)
    finally:
        registry.stop()


def test_the_next_regional_mirror_takes_over_when_the_first_is_killed(
    origin: tuple[Registry, Image], tmp_path: Path
) -> None:
    registry, image = origin
    first = MirrorProcess(tmp_path / "first", {"docker.io": registry.url})
    second = MirrorProcess(tmp_path / "second", {"docker.io": registry.url})
    edge = edge_of(tmp_path / "edge", registry, first, second, keys="mirrors_only = true")
    started = start_all(first, second, edge)
    try:
        first.kill()
        pull_concurrently(edge, "library/tiered:latest", image, tmp_path, 4)
        assert second.stats()["blob_misses"] == len(image.all_blobs())
        mirrors = httpx.get(f"{edge.url}/api/dashboard").json()["upstreams"][0]["mirrors"]
        assert [m["status"] for m in mirrors] in (["down", "ok"], ["degraded", "ok"])
    finally:
        stop_all(started)


def test_a_regional_mirror_without_the_registry_is_passed_over(origin: tuple[Registry, Image], tmp_path: Path) -> None:
    registry, image = origin
    quay_only = MirrorProcess(
        tmp_path / "quay", {"quay.io": registry.url}, server_config='default_upstream = "quay.io"'
    )
    regional = MirrorProcess(tmp_path / "regional", {"docker.io": registry.url})
    edge = edge_of(tmp_path / "edge", registry, quay_only, regional, keys="mirrors_only = true")
    started = start_all(quay_only, regional, edge)
    try:
        refused = httpx.get(f"{quay_only.url}/v2/library/tiered/manifests/latest", params={"ns": "docker.io"})
        assert refused.status_code == 404 and refused.json()["errors"][0]["code"] == "NAME_UNKNOWN"
        skopeo_copy(edge, "library/tiered:latest", tmp_path / "pull")
        verify_dir_copy(tmp_path / "pull", image)
        assert quay_only.stats()["upstreams"]["quay.io"]["requests"] == 0, "asked, and it never asked quay.io"
        assert regional.stats()["blob_misses"] == len(image.all_blobs())
    finally:
        stop_all(started)


def test_a_regional_mirror_with_a_login_of_its_own(origin: tuple[Registry, Image], tmp_path: Path) -> None:
    """A mirror table with its own username and password; a wrong one is passed over for url."""
    registry, image = origin
    users = htpasswd(tmp_path / "regional.htpasswd", {"edge-1": "r3gional"})
    regional = MirrorProcess(
        tmp_path / "regional", {"docker.io": registry.url}, extra_config=f'[auth]\nhtpasswd = "{users}"\n'
    )

    def edge(name: str, password: str, keys: str) -> MirrorProcess:
        mirror = (
            f'[[upstreams."docker.io".mirrors]]\nurl = "{regional.url}"\nusername = "edge-1"\npassword = "{password}"\n'
        )
        return MirrorProcess(tmp_path / name, {"docker.io": registry.url}, upstream_keys={"docker.io": keys + mirror})

    good = edge("good", "r3gional", "mirrors_only = true\n")
    wrong = edge("wrong", "guess", "")
    started = start_all(regional, good, wrong)
    try:
        skopeo_copy(good, "library/tiered:latest", tmp_path / "pull-good")
        verify_dir_copy(tmp_path / "pull-good", image)
        assert regional.stats()["blob_misses"] == len(image.all_blobs())
        mark = registry.mark()
        skopeo_copy(wrong, "library/tiered:latest", tmp_path / "pull-wrong")
        verify_dir_copy(tmp_path / "pull-wrong", image)
        assert blob_gets(registry, mark) == Counter(dict.fromkeys(image.all_blobs(), 1)), "from url, past the refusal"
    finally:
        stop_all(started)


# Offline


class CountingListener:
    """A TCP listener where the upstream was: counts connections, answers none."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()
        self.thread.join(5)


@pytest.mark.parametrize("switch", ["--offline", "[server] offline", "upstream offline"])
def test_offline_serves_the_cache_and_never_dials_out(
    origin: tuple[Registry, Image], tmp_path: Path, switch: str
) -> None:
    registry, image = origin
    online = MirrorProcess(tmp_path / "m", {"docker.io": registry.url}).start()
    try:
        skopeo_copy(online, "library/tiered:latest", tmp_path / "warm")
        online.wait_idle()
    finally:
        online.stop()
    listener = CountingListener()
    offline = MirrorProcess(tmp_path / "m", {"docker.io": f"http://127.0.0.1:{listener.port}"})
    offline.extra_config = 'tag_ttl = "1s"'
    if switch == "--offline":
        offline.args = ["--offline"]
    elif switch == "[server] offline":
        offline.server_config = "offline = true"
    else:
        offline.upstream_keys = {"docker.io": 'offline = true\nmirrors = ["http://127.0.0.1:1"]'}
    offline.port = online.port
    try:
        offline.start()
        time.sleep(1.1)  # every tag older than tag_ttl
        skopeo_copy(offline, "library/tiered:latest", tmp_path / "pull")
        verify_dir_copy(tmp_path / "pull", image)
        tag = httpx.get(f"{offline.url}/v2/library/tiered/manifests/latest", headers={"Accept": image.media_type})
        assert tag.headers["x-cache"] == "STALE"
        missing = httpx.get(f"{offline.url}/v2/library/second/manifests/latest")
        assert missing.status_code == 503
        message = missing.json()["errors"][0]["message"]
        assert "offline" in message and "docker.io/library/second:latest" in message
        blob = httpx.get(f"{offline.url}/v2/library/second/blobs/sha256:{'1' * 64}")
        assert blob.status_code == 503 and "offline" in blob.json()["errors"][0]["message"]
        assert offline.stats()["upstreams"]["docker.io"]["offline"] is True
        assert httpx.get(f"{offline.url}/api/dashboard").json()["upstreams"][0]["status"] == "offline"
        assert 'mirror_upstream_offline{upstream="docker.io"} 1' in httpx.get(f"{offline.url}/metrics").text
    finally:
        offline.stop()
        listener.close()
    assert listener.connections == 0
