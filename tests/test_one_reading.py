"""One reading of a request: the repository access control judged is the one the route serves.

A property test over generated request targets (host prefixes, repeated and empty `ns`, encoded
keys, `..`, `//`, `$`, case): the app is the real one, in process, in front of upstreams that are
offline, and `Traffic` (what the route counts as it serves a repository) must only ever hold the
one repository anonymous clients are granted. Anything else was refused before the route.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote

import httpx
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mirror.composition import Mirror
from mirror.config import load
from mirror.http.assembly import assemble

GRANTED = ("docker.io", "library/public")
RULES = '[[auth.rules]]\nusers = ["*"]\nrepositories = ["docker.io/library/public"]\n'
UPSTREAMS = ("docker.io", "ghcr.io", "registry.k8s.io", "corp.internal:5000")
DIGEST = "sha256:" + "ab" * 32


@dataclass
class InProcess:
    """The real app around a real Mirror, asked through httpx's ASGI transport on one event loop."""

    mirror: Mirror
    portal: BlockingPortal
    client: httpx.AsyncClient

    def request(self, method: str, url: str) -> httpx.Response:
        return self.portal.call(self.client.request, method, url)

    def get(self, url: str) -> httpx.Response:
        return self.request("GET", url)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    root = tmp_path_factory.mktemp("one-reading")
    text = f'[cache]\ndirectory = "{root / "cache"}"\n[auth]\n{RULES}'
    for name in UPSTREAMS:
        text += f'[upstreams."{name}"]\nurl = "http://127.0.0.1:9"\n'
    (root / "config.toml").write_text(text)
    mirror = Mirror(load(root / "config.toml", offline=True))
    transport = httpx.ASGITransport(app=assemble(mirror).app, raise_app_exceptions=False)
    with start_blocking_portal() as portal:
        client = httpx.AsyncClient(transport=transport, base_url="http://mirror")
        try:
            yield InProcess(mirror, portal, client)
        finally:
            portal.call(client.aclose)
            portal.call(mirror.close)


prefixes = st.sampled_from(["", "docker.io/", "ghcr.io/", "registry.k8s.io/", "corp.internal:5000/", "Docker.io/"])
names = st.sampled_from(
    [
        "library/public",
        "public",
        "library/secret",
        "team/secret",
        "org/private",
        "library/public/../secret",
        "library//public",
        "LIBRARY/public",
        "library$public",
        "library/public/",
        "./library/public",
    ]
)
tails = st.sampled_from(
    ["manifests/latest", f"manifests/{DIGEST}", f"blobs/{DIGEST}", "tags/list", f"referrers/{DIGEST}", "manifests/"]
)
ns_keys = st.sampled_from(["ns", "%6Es", "NS", "ns ", "n"])
ns_values = st.sampled_from(["", "docker.io", "ghcr.io", "bogus", "registry.k8s.io", "docker.io%26ns%3Dghcr.io"])
queries = st.lists(st.tuples(ns_keys, ns_values), max_size=3)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    prefix=prefixes,
    name=names,
    tail=tails,
    query=queries,
    encode=st.booleans(),
    method=st.sampled_from(["GET", "HEAD"]),
)
def test_what_is_judged_is_what_is_served(
    app: InProcess,
    prefix: str,
    name: str,
    tail: str,
    query: list[tuple[str, str]],
    encode: bool,
    method: str,
) -> None:
    mirror = app.mirror
    path = f"{prefix}{name}/{tail}"
    if encode:
        path = quote(path, safe=":")  # every slash as %2F: the server decodes the path once
    url = f"/v2/{path}" + ("?" + "&".join(f"{key}={value}" for key, value in query) if query else "")
    before = mirror.traffic.repositories[GRANTED]
    response = app.request(method, url)
    served = set(mirror.traffic.repositories)
    assert served <= {GRANTED}, (url, response.status_code, served)
    route_ran = mirror.traffic.repositories[GRANTED] - before
    if response.status_code not in (400, 401, 403, 404):  # a bad page size is the route's own 400
        assert (response.status_code, route_ran) == (503, 1), (url, response.text)  # offline: the route ran


@pytest.mark.parametrize(
    "query",
    ["ns=bogus&ns=docker.io", "ns=registry.k8s.io&ns=ghcr.io", "ns=", "ns=docker.io&%6Es=ghcr.io"],
)
@pytest.mark.parametrize("tail", ["manifests/latest", f"blobs/{DIGEST}", "tags/list", f"referrers/{DIGEST}"])
def test_a_repeated_or_empty_ns_is_a_bad_request(app: InProcess, query: str, tail: str) -> None:
    for method in ("GET", "HEAD"):
        response = app.request(method, f"/v2/org/private/{tail}?{query}")
        assert response.status_code == 400, response.text
        if method == "GET":
            assert response.json()["errors"][0]["code"] == "UNSUPPORTED"
            assert "ns" in response.json()["errors"][0]["message"]


def test_one_ns_is_judged_as_its_registry(app: InProcess) -> None:
    assert app.get("/v2/org/private/manifests/latest?ns=ghcr.io").status_code == 401
    assert app.get("/v2/library/public/manifests/latest?ns=ghcr.io").status_code == 401
    assert app.get("/v2/library/public/manifests/latest?ns=docker.io").status_code == 503  # granted; offline
    assert app.get("/v2/public/manifests/latest").status_code == 503
