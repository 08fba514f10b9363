"""Tag lists served by the mirror (the spec's order, n, last, Link), and negative answers remembered briefly."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fake_upstream import FakeUpstream
from support import MirrorProcess, Pusher, Registry

# Mixed case and digits: the spec's order is case-insensitive ("lexical, case-insensitive alphanumeric").
TAGS = [f"v{i:03d}" for i in range(245)] + ["Beta", "alpha", "Zulu", "latest", "V1000"]
SPEC_ORDER = sorted(TAGS, key=lambda tag: (tag.casefold(), tag))


@pytest.fixture(scope="module")
def tagged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A registry of its own (the tests stop it) with one image under 250 tags."""
    registry = Registry(tmp_path_factory.mktemp("tagged")).start()
    try:
        with Pusher(registry.url) as pusher:
            image = pusher.image("library/many", TAGS[0], [1024], seed=13)
            for tag in random.Random(13).sample(TAGS, len(TAGS)):  # pushed in no particular order
                pusher.manifest("library/many", tag, image.manifest, image.media_type)
        yield registry
    finally:
        registry.stop()


def walk(base: str, first: str) -> tuple[list[str], list[str]]:
    """Follow the Link headers from `first`; return the tags in the order served, and the links."""
    tags: list[str] = []
    links: list[str] = []
    url: str | None = first
    while url is not None:
        response = httpx.get(base + url, timeout=30)
        assert response.status_code == 200, response.text
        tags += response.json()["tags"]
        link = response.headers.get("link")
        url = link[1 : link.index(">")] if link else None
        if url:
            links.append(url)
        assert len(links) < 10, "paging does not end"
    return tags, links


@pytest.mark.parametrize(
    ("first", "prefix", "suffix"),
    [
        ("/v2/library/many/tags/list?n=100", "/v2/library/many/tags/list?", ""),
        ("/v2/tagged.test/library/many/tags/list?n=100", "/v2/tagged.test/library/many/tags/list?", ""),
        ("/v2/library/many/tags/list?n=100&ns=tagged.test", "/v2/library/many/tags/list?", "&ns=tagged.test"),
    ],
)
def test_paging_gives_every_tag_once_in_order(
    tagged: Registry, tmp_path: Path, first: str, prefix: str, suffix: str
) -> None:
    mirror = MirrorProcess(tmp_path / "m", {"docker.io": tagged.url, "tagged.test": tagged.url}).start()
    try:
        mark = tagged.mark()
        tags, links = walk(mirror.url, first)
        assert tags == SPEC_ORDER
        assert len(links) == 2
        for link in links:
            assert link.startswith(prefix) and link.endswith(suffix) and "n=100" in link, link
        # One upstream listing however the client pages (distribution answers it whole).
        assert [path for _, path, _ in tagged.requests_since(mark)] == ["/v2/library/many/tags/list"]
    finally:
        mirror.stop()


def test_n_and_last(tagged: Registry, tmp_path: Path) -> None:
    mirror = MirrorProcess(tmp_path / "m", {"docker.io": tagged.url}).start()
    try:
        url = f"{mirror.url}/v2/library/many/tags/list"
        empty = httpx.get(url, params={"n": "0"})
        assert empty.status_code == 200 and empty.json() == {"name": "library/many", "tags": []}
        assert "link" not in empty.headers
        after = httpx.get(url, params={"last": "beta", "n": "3"})  # exclusive, and case-insensitive
        assert after.json()["tags"] == ["latest", "v000", "v001"]
        whole = httpx.get(url)
        assert whole.json()["tags"] == SPEC_ORDER and "link" not in whole.headers
        assert httpx.head(url).content == b""
        for bad in ("-1", "ten", "1.5"):
            refused = httpx.get(url, params={"n": bad})
            assert refused.status_code == 400
            assert refused.json()["errors"][0]["code"] == "PAGINATION_NUMBER_INVALID"
        unknown = httpx.get(f"{mirror.url}/v2/library/nothing-here/tags/list")
        assert unknown.status_code == 404 and unknown.json()["errors"][0]["code"] == "NAME_UNKNOWN"
    finally:
        mirror.stop()


def test_the_catalog_lists_the_repositories_held(tagged: Registry, tmp_path: Path) -> None:
    mirror = MirrorProcess(tmp_path / "m", {"docker.io": tagged.url, "tagged.test": tagged.url}).start()
    try:
        assert httpx.get(f"{mirror.url}/v2/_catalog").json() == {"repositories": []}
        accept = {"Accept": "application/vnd.docker.distribution.manifest.v2+json"}
        assert httpx.get(f"{mirror.url}/v2/library/many/manifests/latest", headers=accept).status_code == 200
        assert httpx.get(f"{mirror.url}/v2/tagged.test/library/many/tags/list").status_code == 200
        whole = httpx.get(f"{mirror.url}/v2/_catalog")
        assert whole.json() == {"repositories": ["library/many", "tagged.test/library/many"]}
        first = httpx.get(f"{mirror.url}/v2/_catalog", params={"n": "1"})
        assert first.json() == {"repositories": ["library/many"]}
        assert first.headers["link"] == '</v2/_catalog?n=1&last=library%2Fmany>; rel="next"'
        rest = httpx.get(mirror.url + first.headers["link"][1 : first.headers["link"].index(">")])
        assert rest.json() == {"repositories": ["tagged.test/library/many"]} and "link" not in rest.headers
        assert httpx.post(f"{mirror.url}/v2/_catalog").status_code == 405
    finally:
        mirror.stop()


def test_the_list_is_served_from_the_cache_when_the_upstream_is_down(tmp_path: Path) -> None:
    upstream = Registry(tmp_path / "upstream").start()
    mirror = MirrorProcess(tmp_path / "m", {"docker.io": upstream.url}, extra_config='tag_ttl = "1s"').start()
    try:
        with Pusher(upstream.url) as pusher:
            image = pusher.image("library/down", "one", [512], seed=14)
            pusher.manifest("library/down", "Two", image.manifest, image.media_type)
        url = f"{mirror.url}/v2/library/down/tags/list"
        assert httpx.get(url).json()["tags"] == ["one", "Two"]
        upstream.stop()
        time.sleep(1.2)  # past tag_ttl: the mirror asks, the upstream is gone, the cached list is served
        for _ in range(2):
            stale = httpx.get(url, params={"n": "1"})
            assert stale.status_code == 200 and stale.json()["tags"] == ["one"]
            assert "last=one" in stale.headers["link"]
        mirror.stop()
        mirror.start()  # and after a restart: the index keeps it
        assert httpx.get(url).json()["tags"] == ["one", "Two"]
        never = httpx.get(f"{mirror.url}/v2/library/never-listed/tags/list")
        assert never.status_code == 503
    finally:
        mirror.stop()
        upstream.stop()


def test_a_burst_of_probes_for_a_missing_tag_costs_one_upstream_request(
    fake_upstream: FakeUpstream, fake_mirror: MirrorProcess
) -> None:
    """cosign asks for `sha256-<hex>.sig` for every image; the answer is almost always 404."""
    probe = "sha256-" + "ab" * 32 + ".sig"
    url = f"{fake_mirror.url}/v2/library/x/manifests/{probe}"
    statuses: list[int] = []

    def ask() -> None:
        statuses.append(httpx.get(url, timeout=30).status_code)

    threads = [threading.Thread(target=ask) for _ in range(100)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for _ in range(10):
        ask()
    assert statuses == [404] * 110
    asked = fake_upstream.requests[("GET", probe)] + fake_upstream.requests[("HEAD", probe)]
    assert asked == 1
    assert fake_mirror.stats()["negative_hits"] >= 10
    body = httpx.get(url).json()
    assert body["errors"][0]["code"] == "MANIFEST_UNKNOWN"


@pytest.mark.parametrize("status", [401, 429, 503])
def test_an_upstream_failure_is_not_remembered(
    fake_upstream: FakeUpstream, fake_mirror: MirrorProcess, status: int
) -> None:
    url = f"{fake_mirror.url}/v2/library/x/manifests/soon"
    if status == 401:
        fake_upstream.basic_auth = ("someone", "secret")  # the mirror has no credentials for it
    else:
        fake_upstream.manifest_error = (status, {})
    assert httpx.get(url, timeout=30).status_code == status
    fake_upstream.manifest_error = fake_upstream.basic_auth = None
    fake_upstream.manifests["soon"] = (b'{"schemaVersion": 2}', "application/vnd.oci.image.manifest.v1+json")
    assert httpx.get(url, timeout=30).status_code == 200
