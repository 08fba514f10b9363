"""Every read endpoint of the distribution spec, asked of the mirror and of the real registry behind it.

The same request goes to both; the answers must agree on status, error code, the headers a client
relies on, and an empty body for HEAD. Asked twice of the mirror: cold, then warm.
"""

from __future__ import annotations

import httpx
import pytest
from support import Image, MirrorProcess, Registry

ZERO = "sha256:" + "0" * 64
# Headers a client reads; compared wherever the registry sends them.
COMPARED = (
    "content-type",
    "docker-content-digest",
    "content-length",
    "content-range",
    "docker-distribution-api-version",
)
# The registry sends a charset on its JSON; the media type is what matters.
JSON_TYPES = ("application/json", "application/json; charset=utf-8")


def read_endpoints(images: dict[str, Image]) -> list[tuple[str, str, dict[str, str]]]:
    demo = images["demo"]
    layer = max(demo.blobs, key=lambda digest: len(demo.blobs[digest]))
    accept = {"Accept": demo.media_type}
    index = {"Accept": images["index"].media_type}
    return [
        ("api root", "/v2/", {}),
        ("manifest by tag", "/v2/library/demo/manifests/latest", accept),
        ("manifest by digest", f"/v2/library/demo/manifests/{demo.digest}", accept),
        ("index by tag", "/v2/library/ociindex/manifests/latest", index),
        ("unknown tag", "/v2/library/demo/manifests/nosuchtag", accept),
        ("unknown manifest digest", f"/v2/library/demo/manifests/{ZERO}", accept),
        ("unknown repository", "/v2/library/nosuchrepo/manifests/latest", accept),
        ("blob", f"/v2/library/demo/blobs/{layer}", {}),
        ("blob range", f"/v2/library/demo/blobs/{layer}", {"Range": "bytes=10-1033"}),
        ("unknown blob", f"/v2/library/demo/blobs/{ZERO}", {}),
        ("tag list", "/v2/library/multi/tags/list", {}),
        ("tag list of an unknown repository", "/v2/library/nosuchrepo/tags/list", {}),
    ]


def _code(response: httpx.Response) -> str | None:
    if response.status_code < 400 or response.request.method == "HEAD":
        return None
    return str(response.json()["errors"][0]["code"])


def agree(ours: httpx.Response, theirs: httpx.Response, what: str) -> None:
    method = ours.request.method
    assert ours.status_code == theirs.status_code, f"{method} {what}: {ours.text[:300]}"
    assert _code(ours) == _code(theirs), f"{method} {what}"
    for name in COMPARED:
        if name in theirs.headers:
            mine, registry = ours.headers.get(name), theirs.headers[name]
            if name == "content-type" and registry in JSON_TYPES:
                assert mine in JSON_TYPES, f"{method} {what}: {name}"
            elif name == "content-length" and (theirs.status_code >= 400 or _is_json(theirs)):
                continue  # error messages are worded differently; JSON is written differently
            else:
                assert mine == registry, f"{method} {what}: {name}"
    if method == "HEAD":
        assert ours.content == b"", f"HEAD {what} has a body"
    elif ours.status_code < 300 and _is_json(theirs):
        assert _comparable(ours.json()) == _comparable(theirs.json()), f"GET {what}"
    elif ours.status_code < 300:
        assert ours.content == theirs.content, f"GET {what}"


def _is_json(response: httpx.Response) -> bool:
    return response.headers.get("content-type") in JSON_TYPES


def _comparable(value: dict[str, object]) -> dict[str, object]:
    """A tag list is in storage order from distribution 2.8 and in the spec's order from the mirror."""
    tags = value.get("tags")
    return {**value, "tags": sorted(tags)} if isinstance(tags, list) else value


@pytest.mark.parametrize("method", ["HEAD", "GET"])
def test_every_read_endpoint_answers_as_the_registry_does(
    mirror: MirrorProcess, registry: Registry, images: dict[str, Image], method: str
) -> None:
    for temperature in ("cold", "warm"):
        for what, path, headers in read_endpoints(images):
            if method == "HEAD" and ("Range" in headers or "/tags/list" in path):
                # RFC 9110 §14.2 defines Range for GET only, so the mirror ignores it on HEAD; the spec
                # defines tags/list for GET only, and the mirror answers HEAD where distribution says 405.
                continue
            theirs = httpx.request(method, registry.url + path, headers=headers)
            ours = httpx.request(method, mirror.url + path, headers=headers)
            agree(ours, theirs, f"{what} ({temperature})")
            if method == "GET":
                # Warm it for the second round, whichever way the first one went.
                mirror.wait_idle()


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        # distribution 2.8 answers 500 to a malformed manifest digest; the spec says 400 or 404.
        ("/v2/library/demo/manifests/sha256:1234", 400, "DIGEST_INVALID"),
        ("/v2/library/demo/blobs/sha256:XYZ", 400, "DIGEST_INVALID"),
        ("/v2/library/demo/referrers/sha256:1234", 400, "DIGEST_INVALID"),
        ("/v2/library/demo/referrers/latest", 400, "DIGEST_INVALID"),
        ("/v2/library/demo/tags/list?n=abc", 400, "PAGINATION_NUMBER_INVALID"),
        ("/v2/library/demo/tags/list?n=-1", 400, "PAGINATION_NUMBER_INVALID"),
    ],
)
@pytest.mark.parametrize("method", ["HEAD", "GET"])
def test_what_the_registry_cannot_be_asked(
    mirror: MirrorProcess, method: str, path: str, status: int, code: str
) -> None:
    """Where the registry is no oracle (a 500, no referrers API, `n` unchecked): the spec's errors."""
    response = httpx.request(method, mirror.url + path)
    assert response.status_code == status
    assert response.headers["docker-distribution-api-version"] == "registry/2.0"
    if method == "HEAD":
        assert response.content == b""
    else:
        assert response.json()["errors"][0]["code"] == code


def test_head_of_referrers_and_tag_lists_has_no_body(mirror: MirrorProcess, images: dict[str, Image]) -> None:
    for path in (f"/v2/library/demo/referrers/{images['demo'].digest}", "/v2/library/multi/tags/list"):
        get = httpx.get(mirror.url + path)
        head = httpx.head(mirror.url + path)
        assert (get.status_code, head.status_code) == (200, 200)
        assert head.content == b""
        assert head.headers["content-type"] == get.headers["content-type"]
