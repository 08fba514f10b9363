"""Several token-authenticated upstreams behind one mirror: auth, CDN redirects, routing."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fake_upstream import FakeBlob, FakeUpstream
from support import ALL_MANIFESTS, Image, MirrorProcess, Pusher, Registry, seed_standard_images
from test_pull import skopeo_copy
from token_upstream import StaticCDN, TokenIssuer, enable_token_auth


@dataclass
class Upstreams:
    hub: Registry
    hub_issuer: TokenIssuer
    hub_cdn: StaticCDN
    ghcr: Registry
    ghcr_issuer: TokenIssuer
    images: dict[str, Image]
    app: Image
    shared_layer: str


@pytest.fixture(scope="module")
def upstreams(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstreams]:
    root = tmp_path_factory.mktemp("upstreams")
    hub = Registry(root / "hub").start()
    ghcr = Registry(root / "ghcr").start()
    started: list[Registry | TokenIssuer | StaticCDN] = [hub, ghcr]
    try:
        images = seed_standard_images(hub.url)
        with Pusher(ghcr.url) as pusher:
            app = pusher.image("org/app", "1.0", [256 * 1024, 4096], seed=1)  # seed 1: same layers as demo
        shared = next(iter(set(app.blobs) & set(images["demo"].blobs)))
        hub_issuer = TokenIssuer(root / "hub-issuer")
        hub_cdn = StaticCDN(hub.root / "data")
        ghcr_issuer = TokenIssuer(root / "ghcr-issuer", credentials=("alice", "s3cret"))
        started += [hub_issuer, hub_cdn, ghcr_issuer]
        enable_token_auth(hub, hub_issuer, hub_cdn)
        enable_token_auth(ghcr, ghcr_issuer, None)
        yield Upstreams(hub, hub_issuer, hub_cdn, ghcr, ghcr_issuer, images, app, shared)
    finally:
        for part in started:
            part.stop()


@pytest.fixture
def two_mirror(tmp_path: Path, upstreams: Upstreams) -> Iterator[MirrorProcess]:
    process = MirrorProcess(
        tmp_path / "mirror",
        {"docker.io": upstreams.hub.url, "ghcr.io": upstreams.ghcr.url},
        credentials={"ghcr.io": ("alice", "s3cret")},
    ).start()
    try:
        yield process
    finally:
        process.stop()


def test_token_auth_and_cdn_redirect(two_mirror: MirrorProcess, upstreams: Upstreams, tmp_path: Path) -> None:
    image = upstreams.images["oci"]
    issued, cdn_seen = len(upstreams.hub_issuer.requests), len(upstreams.hub_cdn.requests)
    skopeo_copy(two_mirror, "library/ocidemo:latest", tmp_path / "out")
    cdn_gets = [r.path.split("/")[-2] for r in upstreams.hub_cdn.requests[cdn_seen:] if r.method == "GET"]
    assert sorted(cdn_gets) == sorted(d.split(":")[1] for d in image.blobs), "every blob once, from the CDN"
    # One token for the repository, reused for the manifest and every blob.
    assert len(upstreams.hub_issuer.requests) - issued == 1
    assert all("Authorization" not in r.headers for r in upstreams.hub_cdn.requests), "no credentials to the CDN"


def test_credentials_go_to_the_realm_only(two_mirror: MirrorProcess, upstreams: Upstreams, tmp_path: Path) -> None:
    skopeo_copy(two_mirror, "ghcr.io/org/app:1.0", tmp_path / "out")
    token_requests = upstreams.ghcr_issuer.requests
    assert token_requests, "the ghcr stand-in was asked for a token"
    assert all(r.headers.get("Authorization", "").startswith("Basic ") for r in token_requests)
    assert all("Authorization" not in r.headers for r in upstreams.hub_issuer.requests)
    log = two_mirror.log_path.read_text()
    assert "s3cret" not in log


def test_upstream_is_chosen_by_ns_then_path_then_default(two_mirror: MirrorProcess, upstreams: Upstreams) -> None:
    accept = [("Accept", a) for a in ALL_MANIFESTS]
    by_ns = httpx.get(f"{two_mirror.url}/v2/org/app/manifests/1.0", params={"ns": "ghcr.io"}, headers=accept)
    assert by_ns.status_code == 200
    assert by_ns.headers["docker-content-digest"] == upstreams.app.digest
    by_path = httpx.get(f"{two_mirror.url}/v2/ghcr.io/org/app/manifests/1.0", headers=accept)
    assert by_path.headers["docker-content-digest"] == upstreams.app.digest
    by_default = httpx.get(f"{two_mirror.url}/v2/library/demo/manifests/latest", headers=accept)
    assert by_default.headers["docker-content-digest"] == upstreams.images["demo"].digest
    hub_ns = httpx.get(f"{two_mirror.url}/v2/library/demo/manifests/latest", params={"ns": "docker.io"}, headers=accept)
    assert hub_ns.headers["docker-content-digest"] == upstreams.images["demo"].digest
    # The same repository and tag on two upstreams are two different tags.
    assert httpx.get(f"{two_mirror.url}/v2/ghcr.io/library/demo/manifests/latest").status_code == 404


def test_blobs_are_shared_across_upstreams(two_mirror: MirrorProcess, upstreams: Upstreams) -> None:
    """Stored once; served under ghcr.io's name once ghcr.io has said it holds it there.

    ghcr.io has credentials here, so the cache may hold private content: a digest is served
    under a repository only once linked to it (a manifest of it named it, or the upstream said
    yes to a HEAD under that name). The bytes are never fetched twice.
    """
    digest = upstreams.shared_layer
    first = httpx.get(f"{two_mirror.url}/v2/library/demo/blobs/{digest}")
    assert first.headers["x-cache"] == "MISS"
    two_mirror.wait_idle()
    mark = upstreams.ghcr.mark()
    second = httpx.get(f"{two_mirror.url}/v2/ghcr.io/org/app/blobs/{digest}")
    assert second.headers["x-cache"] == "HIT"
    assert second.content == first.content
    asked = [(method, status) for method, _, status in upstreams.ghcr.requests_since(mark)]
    assert asked == [("HEAD", 401), ("HEAD", 200)], "one HEAD (after its token) checked it belongs there"
    mark = upstreams.ghcr.mark()
    third = httpx.get(f"{two_mirror.url}/v2/ghcr.io/org/app/blobs/{digest}")
    assert third.headers["x-cache"] == "HIT" and upstreams.ghcr.requests_since(mark) == []


def test_unconfigured_hosts_are_never_contacted(two_mirror: MirrorProcess) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        host = f"127.0.0.1:{listener.getsockname()[1]}"
        for url, params in [
            (f"{two_mirror.url}/v2/library/demo/manifests/latest", {"ns": host}),
            (f"{two_mirror.url}/v2/library/demo/blobs/sha256:{'a' * 64}", {"ns": host}),
            (f"{two_mirror.url}/v2/{host}/library/demo/manifests/latest", {}),
            (f"{two_mirror.url}/v2/localhost/library/demo/manifests/latest", {}),
            (f"{two_mirror.url}/v2/quay.io/org/app/manifests/1.0", {}),
        ]:
            response = httpx.get(url, params=params)
            assert response.status_code == 404, url
            assert response.json()["errors"][0]["code"] == "NAME_UNKNOWN"
        time.sleep(0.2)
        with pytest.raises(BlockingIOError):
            listener.accept()


def test_expired_token_is_refreshed_once(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry").start()
    issuer = TokenIssuer(tmp_path / "issuer")
    try:
        with Pusher(registry.url) as pusher:
            image = pusher.image("library/short", "latest", [1024], seed=5)
        enable_token_auth(registry, issuer, None)
        process = MirrorProcess(tmp_path / "m", {"docker.io": registry.url}, extra_config='tag_ttl = "0s"').start()
        try:
            url = f"{process.url}/v2/library/short/manifests/latest"
            assert httpx.get(url, headers={"Accept": image.media_type}).status_code == 200
            assert len(issuer.requests) == 1
            # A key rotation: the registry now rejects the token the mirror still holds.
            issuer.rotate_key()
            enable_token_auth(registry, issuer, None)
            again = httpx.get(url, headers={"Accept": image.media_type})
            assert again.status_code == 200
            assert again.headers["x-cache"] == "REVALIDATED"
            assert len(issuer.requests) == 2
        finally:
            process.stop()
    finally:
        registry.stop()
        issuer.stop()


def test_basic_auth_upstream(fake_upstream: FakeUpstream, fake_mirror: MirrorProcess, tmp_path: Path) -> None:
    fake_upstream.basic_auth = ("bob", "pw")
    fake_mirror.stop()
    process = MirrorProcess(
        tmp_path / "basic", {"docker.io": fake_upstream.url}, credentials={"docker.io": ("bob", "pw")}
    ).start()
    try:
        digest = fake_upstream.add_blob(FakeBlob(b"basic-auth content"))
        response = httpx.get(f"{process.url}/v2/library/x/blobs/{digest}")
        assert response.status_code == 200
        assert response.content == b"basic-auth content"
        # Challenged once, then the credential goes with every request.
        httpx.get(f"{process.url}/v2/library/x/blobs/{fake_upstream.add_blob(FakeBlob(b'second'))}")
        assert fake_upstream.authorizations[0] is None
        assert all(a is not None and a.startswith("Basic ") for a in fake_upstream.authorizations[1:])
    finally:
        process.stop()


def test_rate_limit_serves_cached_tag_else_passes_429(fake_upstream: FakeUpstream, tmp_path: Path) -> None:
    body = b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "layers": []}'
    fake_upstream.manifests["cached"] = (body, "application/vnd.oci.image.manifest.v1+json")
    process = MirrorProcess(tmp_path / "m", {"docker.io": fake_upstream.url}, extra_config='tag_ttl = "0s"').start()
    try:
        assert httpx.get(f"{process.url}/v2/library/x/manifests/cached").status_code == 200
        fake_upstream.manifest_error = (429, {"Retry-After": "42"})
        stale = httpx.get(f"{process.url}/v2/library/x/manifests/cached")
        assert stale.status_code == 200
        assert stale.headers["x-cache"] == "STALE"
        assert stale.content == body
        limited = httpx.get(f"{process.url}/v2/library/x/manifests/uncached")
        assert limited.status_code == 429
        assert limited.headers["retry-after"] == "42"
        assert limited.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
    finally:
        process.stop()
