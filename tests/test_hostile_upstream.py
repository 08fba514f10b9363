"""A broken or hostile upstream cannot loop, poison or redirect the mirror.

The fake upstream does what a real registry will not do on demand: no Content-Length with Range
ignored, wrong bytes behind a stall, HTML for a manifest, schema1.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fake_upstream import FakeBlob, FakeUpstream
from support import MirrorProcess

from mirror.upstream.auth import same_site
from mirror.upstream.client import MAX_TAGS
from mirror.upstream.destinations import DestinationRule


def test_a_blob_of_unknown_length_that_ignores_range_is_fetched_once(
    fake_upstream: FakeUpstream, fake_mirror: MirrorProcess
) -> None:
    """Chunked, no Range: once looped at 715 whole-blob GETs a second with the client stuck."""
    blob = FakeBlob(random.Random(4).randbytes(1 << 20), repeat=3, ranges=False, length=False)
    digest = fake_upstream.add_blob(blob)
    response = httpx.get(f"{fake_mirror.url}/v2/library/x/blobs/{digest}", timeout=30)
    assert response.status_code == 200
    assert "sha256:" + hashlib.sha256(response.content).hexdigest() == digest
    fake_mirror.wait_idle()
    assert fake_upstream.gets(digest) == 1
    again = httpx.get(f"{fake_mirror.url}/v2/library/x/blobs/{digest}", timeout=30)
    assert again.headers["x-cache"] == "HIT" and again.content == response.content
    assert fake_upstream.gets(digest) == 1


def _start_download(url: str) -> threading.Thread:
    def read() -> None:
        with contextlib.suppress(httpx.HTTPError):  # it fails: what matters is what the range read got
            httpx.get(url, timeout=60)

    thread = threading.Thread(target=read)
    thread.start()
    return thread


def _wait_for_bytes(mirror: MirrorProcess, at_least: int) -> None:
    for _ in range(1000):
        if mirror.stats()["bytes_fetched_from_upstream"] >= at_least:
            return
        threading.Event().wait(0.01)
    raise AssertionError("the download did not get going")


def test_a_range_during_a_download_is_not_served_from_unverified_bytes(
    fake_upstream: FakeUpstream, fake_mirror: MirrorProcess
) -> None:
    """Upstream honours Range: the range goes upstream itself, and says so (X-Cache: PASS)."""
    blob = FakeBlob(random.Random(5).randbytes(1 << 20), repeat=2, gate_at=1 << 20, wrong_bytes=True)
    digest = fake_upstream.add_blob(blob)
    url = f"{fake_mirror.url}/v2/library/x/blobs/{digest}"
    reader = _start_download(url)
    try:
        _wait_for_bytes(fake_mirror, 1 << 19)
        ranged = httpx.get(url, headers={"Range": "bytes=0-99"}, timeout=30)
        assert ranged.status_code == 206
        assert ranged.headers["x-cache"] == "PASS", "bytes straight from the upstream, not the cache's"
    finally:
        blob.gate.set()
        reader.join(60)
    fake_mirror.wait_idle()
    assert not fake_mirror.blob_path(digest).exists(), "the wrong bytes never became a cached blob"


def test_a_range_during_a_download_waits_for_the_digest_when_the_upstream_ignores_range(
    fake_upstream: FakeUpstream, fake_mirror: MirrorProcess
) -> None:
    """No Range upstream: the range waits for the verified file, so wrong bytes are never a complete 206."""
    blob = FakeBlob(random.Random(6).randbytes(1 << 20), repeat=2, gate_at=1 << 20, wrong_bytes=True, ranges=False)
    digest = fake_upstream.add_blob(blob)
    url = f"{fake_mirror.url}/v2/library/x/blobs/{digest}"
    reader = _start_download(url)
    got: list[bytes | Exception] = []

    def read_range() -> None:
        try:
            with httpx.stream("GET", url, headers={"Range": "bytes=0-99"}, timeout=30) as response:
                got.append(response.read() if response.status_code == 206 else b"")
        except httpx.HTTPError as exc:
            got.append(exc)

    try:
        _wait_for_bytes(fake_mirror, 1 << 19)
        ranged = threading.Thread(target=read_range)
        ranged.start()
        ranged.join(1.0)
        assert not got, "nothing is sent before the digest is checked"
    finally:
        blob.gate.set()
        reader.join(60)
    ranged.join(30)
    assert len(got) == 1
    assert isinstance(got[0], Exception) or len(got[0]) < 100, "a corrupt download is never a complete 206"
    assert not fake_mirror.blob_path(digest).exists()


@pytest.mark.parametrize(
    ("body", "media_type", "said"),
    [
        (b"<html><script>alert(1)</script></html>", "text/html", "is not JSON"),
        (b'{"schemaVersion": 2, "layers": []}', "text/html", "not a manifest media type"),
        (b"[1, 2]", "application/vnd.oci.image.manifest.v1+json", "not an object"),
        (b'{"schemaVersion": 1, "name": "x"}', "application/vnd.docker.distribution.manifest.v1+prettyjws", "schema1"),
        (b'{"schemaVersion": 1, "name": "x"}', "application/json", "schema1"),
    ],
)
def test_a_manifest_that_is_not_one_is_a_502_naming_the_upstream(
    fake_upstream: FakeUpstream, fake_mirror: MirrorProcess, body: bytes, media_type: str, said: str
) -> None:
    fake_upstream.manifests["bad"] = (body, media_type)
    response = httpx.get(f"{fake_mirror.url}/v2/library/x/manifests/bad")
    assert response.status_code == 502, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-content-type-options"] == "nosniff"
    message = response.json()["errors"][0]["message"]
    assert "upstream docker.io" in message and said in message
    assert httpx.get(f"{fake_mirror.url}/v2/library/x/manifests/bad").status_code == 502, "never stored"


def test_a_manifest_with_a_generic_type_is_served_as_its_own_media_type(
    fake_upstream: FakeUpstream, fake_mirror: MirrorProcess
) -> None:
    body = b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []}'
    fake_upstream.manifests["generic"] = (body, "application/json")
    response = httpx.get(f"{fake_mirror.url}/v2/library/x/manifests/generic")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/vnd.oci.image.index.v1+json"
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.fixture
def other_server() -> Iterator[FakeUpstream]:
    """Another server on the same host, another port: what a `Link` should never lead credentials to."""
    other = FakeUpstream().start()
    try:
        yield other
    finally:
        other.stop()


def test_credentials_and_pages_stay_on_the_upstreams_origin(
    tmp_path: Path, fake_upstream: FakeUpstream, other_server: FakeUpstream
) -> None:
    fake_upstream.basic_auth = ("bot", "b0t-secret")
    fake_upstream.tag_pages = [["a", "b"], ["c"]]
    fake_upstream.tags_last_link = f"{other_server.url}/v2/library/x/tags/list"
    other_server.tag_pages = [["planted"]]
    mirror = MirrorProcess(
        tmp_path / "m", {"docker.io": fake_upstream.url}, credentials={"docker.io": fake_upstream.basic_auth}
    )
    mirror.start()
    try:
        listed = httpx.get(f"{mirror.url}/v2/library/x/tags/list")
        assert listed.status_code == 200, listed.text
        assert listed.json()["tags"] == ["a", "b", "c"], "another origin's page is not this registry's"
    finally:
        mirror.stop()
    assert other_server.requests[("TAGS", "library/x")] == 0
    assert other_server.authorizations == []


def test_a_tag_list_is_capped(fake_upstream: FakeUpstream, fake_mirror: MirrorProcess) -> None:
    """1,000 pages of 1,000 tags once grew the process by 270 MB, kept."""
    fake_upstream.tag_pages = [[f"t{page}-{n}" for n in range(1000)] for page in range(60)]
    tags: list[str] = []
    url: str | None = f"{fake_mirror.url}/v2/library/x/tags/list"
    while url is not None:
        listed = httpx.get(url, timeout=60)
        assert listed.status_code == 200
        tags += listed.json()["tags"]
        link = listed.headers.get("link")
        url = fake_mirror.url + link[1 : link.index(">")] if link else None
    assert len(tags) == len(set(tags)) == MAX_TAGS
    assert fake_upstream.requests[("TAGS", "library/x")] == MAX_TAGS // 1000


@pytest.mark.parametrize(
    ("realm", "upstream", "shares"),
    [
        ("auth.docker.io", "registry-1.docker.io", True),
        ("ghcr.io", "ghcr.io", True),
        ("evil.co.uk", "registry.co.uk", False),
        ("attacker.github.io", "org.github.io", False),
        ("docker.io.attacker.com", "registry-1.docker.io", False),
        ("127.0.0.2", "127.0.0.1", False),
        ("localhost", "registry", False),
    ],
)
def test_a_token_realm_gets_the_login_only_on_the_upstreams_site(realm: str, upstream: str, shares: bool) -> None:
    assert same_site(realm, upstream) is shares


def test_a_manifest_redirect_stays_on_the_upstreams_origin(
    fake_upstream: FakeUpstream, fake_mirror: MirrorProcess, other_server: FakeUpstream
) -> None:
    """A redirect to another local server once came back as a 200 manifest, stored and served."""
    other_server.manifests["planted"] = (
        b'{"schemaVersion": 2, "layers": []}',
        "application/vnd.oci.image.manifest.v1+json",
    )
    fake_upstream.manifest_redirect = f"{other_server.url}/v2/library/x/manifests/planted"
    response = httpx.get(f"{fake_mirror.url}/v2/library/x/manifests/latest")
    assert response.status_code == 502, response.text
    assert "manifests and lists stay on the upstream's origin" in response.json()["errors"][0]["message"]
    assert other_server.requests[("GET", "planted")] == 0, "never asked"


def test_a_blob_may_follow_a_redirect_to_a_cdn_host(fake_upstream: FakeUpstream, fake_mirror: MirrorProcess) -> None:
    fake_upstream.cdn_redirects = True
    digest = fake_upstream.add_blob(FakeBlob(random.Random(8).randbytes(256 * 1024)))
    response = httpx.get(f"{fake_mirror.url}/v2/library/x/blobs/{digest}")
    assert response.status_code == 200 and fake_upstream.cdn_requests[-1][1] == 200


@pytest.mark.parametrize(
    ("resolved", "upstream_on", "allowed"),
    [
        (["93.184.216.34"], set(), True),  # a public CDN address
        (["127.0.0.1"], set(), False),
        (["10.1.2.3"], set(), False),
        (["169.254.169.254"], set(), False),  # the cloud metadata service
        (["::ffff:127.0.0.1"], set(), False),
        (["0.0.0.0"], set(), False),
        (["10.1.2.3", "93.184.216.34"], set(), True),  # one public address: that one is dialled
        (["10.1.2.3"], {"private"}, True),  # an intranet registry's intranet CDN
        (["127.0.0.2"], {"loopback"}, True),
        (["10.1.2.3"], {"loopback"}, False),
    ],
)
def test_a_blob_redirect_reaches_private_addresses_only_from_a_private_upstream(
    resolved: list[str], upstream_on: set[str], allowed: bool
) -> None:
    """Judged on the addresses a CDN's name resolves to where the socket is connected; nothing is dialled here."""
    rule = DestinationRule("cdn.example", "docker.io", frozenset({"public"} | upstream_on))
    refusal = rule.refusal(resolved)
    assert (refusal is None) is allowed
    if refusal is not None:
        assert "redirect_hosts" in refusal
