"""Property-based tests: parsers never fail but with our errors; no request gets a 500."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fake_upstream import FakeBlob, FakeUpstream
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import MirrorProcess

from mirror.config import ConfigError, from_dict, parse_duration, parse_size
from mirror.http.responses import parse_range
from mirror.registry.errors import RegistryError
from mirror.registry.mediatypes import accepted_types
from mirror.registry.reference import NAME_RE, Digest, parse_digest, parse_name, parse_reference
from mirror.upstream.auth import parse_challenge

FUZZ = settings(max_examples=400, deadline=None)
text = st.text(alphabet=st.characters(codec="utf-8"), max_size=300)
registryish = st.text(alphabet="abcdefgz0129._-/:%@+ ", max_size=120)


@FUZZ
@given(st.one_of(text, registryish))
def test_names(value: str) -> None:
    try:
        name = parse_name(value)
    except RegistryError as error:
        assert error.code == "NAME_INVALID"
    else:
        assert name == value and len(name) <= 255 and NAME_RE.fullmatch(name)
        assert ".." not in name.split("/") and not name.startswith("/")


@FUZZ
@given(st.one_of(text, registryish, st.from_regex(r"sha(256|512):[0-9a-f]{64,128}", fullmatch=True)))
def test_digests_and_references(value: str) -> None:
    try:
        digest = parse_digest(value)
    except RegistryError as error:
        assert error.code == "DIGEST_INVALID"
    else:
        assert str(digest) == value and "/" not in digest.hex and "." not in digest.hex
    try:
        reference = parse_reference(value)
    except RegistryError as error:
        assert error.code in ("DIGEST_INVALID", "TAG_INVALID")
    else:
        assert isinstance(reference, Digest) or (reference == value and "/" not in value)


@FUZZ
@given(st.one_of(text, st.from_regex(r"bytes=\d{0,12}-\d{0,12}", fullmatch=True)), st.integers(0, 2**40))
def test_ranges(header: str, size: int) -> None:
    try:
        parsed = parse_range(header, size)
    except RegistryError as error:
        assert error.status == 416
        assert error.headers["Content-Range"] == f"bytes */{size}"
    else:
        if parsed is not None:
            start, end = parsed
            assert 0 <= start < end <= size


@FUZZ
@given(
    st.one_of(text, st.from_regex(r'Bearer realm="[^"]{0,30}",service="[a-z.]{0,10}"(,scope="[^"]*")?', fullmatch=True))
)
def test_www_authenticate(header: str) -> None:
    challenge = parse_challenge(header)
    if challenge is not None:
        assert challenge.scheme == challenge.scheme.lower()
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in challenge.params.items())


@FUZZ
@given(st.lists(st.one_of(text, registryish), max_size=5))
def test_accept(values: list[str]) -> None:
    for media_type in accepted_types(values):
        assert "," not in media_type and ";" not in media_type and media_type == media_type.strip().lower()


scalar = st.one_of(st.none(), st.booleans(), st.integers(-(10**12), 10**12), st.floats(allow_nan=True), text)


@FUZZ
@given(scalar)
def test_sizes_and_durations(value: object) -> None:
    for parse in (parse_size, parse_duration):
        try:
            result = parse(value, "k")
        except ConfigError as error:
            assert error.key == "k"
        else:
            assert result >= 0


toml_value = st.recursive(
    scalar.filter(lambda v: v is not None), lambda inner: st.dictionaries(text, inner, max_size=4)
)


@FUZZ
@given(
    st.dictionaries(st.sampled_from(["server", "cache", "log", "auth", "upstreams", "other"]), toml_value, max_size=4)
)
def test_any_config_is_loaded_or_named_as_wrong(data: dict[str, object]) -> None:
    try:
        from_dict(data)
    except ConfigError as error:
        assert error.key and error.problem


# HTTP: every route, arbitrary paths, methods and headers, against a live mirror.


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MirrorProcess, FakeUpstream]]:
    upstream = FakeUpstream().start()
    upstream.add_blob(FakeBlob(b"a fuzzed blob"))
    process = MirrorProcess(tmp_path_factory.mktemp("fuzz") / "m", {"docker.io": upstream.url}).start()
    try:
        yield process, upstream
    finally:
        process.stop()
        upstream.stop()


segment = st.one_of(
    st.sampled_from(
        [
            "v2",
            "library",
            "demo",
            "manifests",
            "blobs",
            "tags",
            "list",
            "latest",
            "..",
            "%2e%2e",
            "%2F",
            "uploads",
            "sha256:" + "0" * 64,
            "ghcr.io",
            "docker.io",
            "stats",
            "metrics",
            "api",
            "images",
            "healthz",
            "",
            "static",
        ]
    ),
    st.text(alphabet=st.characters(codec="ascii", exclude_characters="/?#"), max_size=20),
)
headers = st.dictionaries(
    st.sampled_from(["Accept", "Range", "Authorization", "If-Range", "Content-Type", "X-Anything"]),
    st.text(alphabet=st.characters(codec="latin-1", exclude_categories=("Cc",)), max_size=80),
    max_size=4,
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    method=st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]),
    segments=st.lists(segment, min_size=1, max_size=7),
    query=st.sampled_from(["", "?ns=docker.io", "?ns=evil.example", "?n=1&last=%00", "?ns="]),
    request_headers=headers,
)
def test_no_request_gets_a_500(
    live: tuple[MirrorProcess, FakeUpstream],
    method: str,
    segments: list[str],
    query: str,
    request_headers: dict[str, str],
    tmp_path: Path,
) -> None:
    process, _ = live
    path = "/" + "/".join(segments) + query
    with httpx.Client(timeout=10) as client:
        try:
            raw_headers = {name: value.encode("latin-1") for name, value in request_headers.items()}
            response = client.request(method, process.url + path, headers=raw_headers)
        except (httpx.InvalidURL, httpx.LocalProtocolError):
            return  # the client itself refuses to send it
    assert response.status_code < 500 or response.status_code in (502, 503), (path, response.text)
    assert b"Traceback" not in response.content
    if response.status_code >= 400 and method != "HEAD" and path.startswith("/v2"):
        assert "errors" in json.loads(response.content), (path, response.text)


def test_unicode_digits_in_a_range_are_no_range() -> None:
    # "²".isdigit() is True, and int("²") raises: such a Range is ignored, never a 500.
    assert parse_range("bytes=²-", 100) is None
    assert parse_range("bytes=0-²", 100) is None
