"""The HTTP surface: headers, ranges, errors and bad input, checked with plain HTTP."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import httpx
import pytest
from support import Image, MirrorProcess, Registry


def test_api_root(mirror: MirrorProcess) -> None:
    response = httpx.get(f"{mirror.url}/v2/")
    assert response.status_code == 200
    assert response.json() == {}
    assert response.headers["docker-distribution-api-version"] == "registry/2.0"


def test_manifest_headers_and_head(mirror: MirrorProcess, images: dict[str, Image]) -> None:
    image = images["demo"]
    for method in ("HEAD", "GET", "HEAD"):
        response = httpx.request(
            method, f"{mirror.url}/v2/library/demo/manifests/latest", headers={"Accept": image.media_type}
        )
        assert response.status_code == 200
        assert response.headers["content-type"] == image.media_type
        assert response.headers["docker-content-digest"] == image.digest
        assert response.headers["content-length"] == str(len(image.manifest))
        assert response.content == (image.manifest if method == "GET" else b"")
    by_digest = httpx.get(f"{mirror.url}/v2/library/demo/manifests/{image.digest}")
    assert by_digest.content == image.manifest
    assert by_digest.headers["x-cache"] == "HIT"


def test_docker_hub_library_namespace(mirror: MirrorProcess, images: dict[str, Image]) -> None:
    short = httpx.get(f"{mirror.url}/v2/demo/manifests/latest", headers={"Accept": images["demo"].media_type})
    assert short.status_code == 200
    assert short.headers["docker-content-digest"] == images["demo"].digest


@pytest.mark.parametrize("cached", [False, True])
def test_blob_range_and_head(mirror: MirrorProcess, images: dict[str, Image], cached: bool) -> None:
    digest, data = max(images["demo"].blobs.items(), key=lambda item: len(item[1]))
    url = f"{mirror.url}/v2/library/demo/blobs/{digest}"
    if cached:
        assert httpx.get(url).content == data
        mirror.wait_idle()
    head = httpx.head(url)
    assert head.status_code == 200
    assert head.headers["content-length"] == str(len(data))
    assert head.headers["docker-content-digest"] == digest
    assert head.content == b""
    partial = httpx.get(url, headers={"Range": "bytes=100-1123"})
    assert partial.status_code == 206
    assert partial.headers["content-range"] == f"bytes 100-1123/{len(data)}"
    assert partial.content == data[100:1124]
    suffix = httpx.get(url, headers={"Range": "bytes=-10"})
    assert suffix.status_code == 206
    assert suffix.content == data[-10:]
    unsatisfiable = httpx.get(url, headers={"Range": f"bytes={len(data)}-"})
    assert unsatisfiable.status_code == 416
    assert unsatisfiable.headers["content-range"] == f"bytes */{len(data)}"
    assert unsatisfiable.json()["errors"][0]["code"] == "RANGE_INVALID"


def test_tags_list(mirror: MirrorProcess, registry: Registry, images: dict[str, Image]) -> None:
    """The mirror keeps the whole list and pages it itself (tests/test_taglists.py has the rest)."""
    response = httpx.get(f"{mirror.url}/v2/library/multi/tags/list")
    assert response.status_code == 200
    assert response.json()["tags"] == ["amd64", "arm64", "latest"]
    page = httpx.get(f"{mirror.url}/v2/library/multi/tags/list", params={"n": "1", "last": "amd64"})
    assert page.json()["tags"] == ["arm64"]
    assert page.headers["link"] == '</v2/library/multi/tags/list?n=1&last=arm64>; rel="next"'


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
@pytest.mark.parametrize(
    "path",
    ["/v2/", "/v2/library/demo/blobs/uploads/", "/v2/library/demo/manifests/latest", "/v2/x/blobs/sha256:" + "a" * 64],
)
def test_writes_are_unsupported(mirror: MirrorProcess, method: str, path: str) -> None:
    response = httpx.request(method, mirror.url + path, content=b"{}")
    assert response.status_code == 405
    assert response.json()["errors"][0]["code"] == "UNSUPPORTED"


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/v2/Library/Demo/manifests/latest", 400, "NAME_INVALID"),
        ("/v2/library/demo/manifests/-bad-tag", 400, "TAG_INVALID"),
        ("/v2/library/demo/manifests/sha256:1234", 400, "DIGEST_INVALID"),
        ("/v2/library/demo/blobs/sha256:XYZ", 400, "DIGEST_INVALID"),
        ("/v2/library/demo/blobs/md5:" + "a" * 32, 400, "DIGEST_INVALID"),
        ("/v2/library/demo/blobs/latest", 400, "DIGEST_INVALID"),
        ("/v2/library/demo/manifests/sha256:" + "0" * 64, 404, "MANIFEST_UNKNOWN"),
        ("/v2/library/demo/blobs/sha256:" + "0" * 64, 404, "BLOB_UNKNOWN"),
        ("/v2/nosuch/repo/manifests/latest", 404, "MANIFEST_UNKNOWN"),
        ("/v2/library/demo/nonsense", 404, "NOT_FOUND"),
        ("/v2/evil.example.com/library/demo/manifests/latest", 404, "NAME_UNKNOWN"),
        ("/v2/library/%2e%2e/%2e%2e/manifests/latest", 400, "NAME_INVALID"),
        ("/v2/library/demo/blobs/sha256:..%2f..%2f..%2fetc%2fpasswd", 404, "NOT_FOUND"),
        ("/v2/library/demo%2f..%2f..%2fetc/blobs/sha256:" + "0" * 64, 400, "NAME_INVALID"),
    ],
)
def test_bad_input_gets_registry_errors(
    mirror: MirrorProcess, images: dict[str, Image], path: str, status: int, code: str
) -> None:
    response = httpx.get(mirror.url + path)
    assert response.status_code == status, response.text
    assert response.json()["errors"][0]["code"] == code


@pytest.mark.parametrize(
    "raw_path",
    [
        "/v2/../../../etc/passwd",
        "/v2/library/../../../../etc/passwd/blobs/sha256:" + "0" * 64,
        "/v2/library/demo/blobs/../../../../../../etc/passwd",
        "/v2/%2e%2e/%2e%2e/%2e%2e/etc/passwd/manifests/latest",
        "/v2/library/demo/blobs/sha256%3a..%2f..%2f..%2f..%2fetc%2fpasswd",
    ],
)
def test_path_traversal_never_reads_outside_the_cache(mirror: MirrorProcess, raw_path: str) -> None:
    # Sent on a raw socket: an HTTP client would normalise the dot segments away.
    with socket.create_connection(("127.0.0.1", mirror.port)) as sock:
        sock.sendall(f"GET {raw_path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    assert status in (400, 404)
    assert b"root:" not in body
    assert b'"errors"' in body


def test_stats_and_metrics(mirror: MirrorProcess, images: dict[str, Image]) -> None:
    digest, data = next(iter(images["demo"].blobs.items()))
    for _ in range(2):
        assert httpx.get(f"{mirror.url}/v2/library/demo/blobs/{digest}").content == data
        mirror.wait_idle()
    stats = mirror.stats()
    assert stats["blob_misses"] == 1
    assert stats["blob_hits"] == 1
    assert stats["bytes_served_from_cache"] == len(data)
    assert stats["bytes_fetched_from_upstream"] == len(data)
    assert stats["cached_blobs"] == 1
    assert stats["cached_bytes"] == len(data)
    assert stats["inflight_downloads"] == 0
    for key in ("requests", "manifest_hits", "manifest_misses", "coalesced"):
        assert key in stats
    metrics = httpx.get(f"{mirror.url}/metrics")
    assert "mirror_blob_hits_total 1" in metrics.text
    assert "# TYPE mirror_cached_bytes gauge" in metrics.text
    assert httpx.get(f"{mirror.url}/healthz").json() == {"status": "ok"}


def test_access_log_names_the_cache_status(mirror: MirrorProcess, images: dict[str, Image]) -> None:
    digest, data = next(iter(images["demo"].blobs.items()))
    url = f"{mirror.url}/v2/library/demo/blobs/{digest}"
    httpx.get(url)
    mirror.wait_idle()
    httpx.get(url)
    httpx.get(f"{mirror.url}/v2/library/demo/blobs/sha256:{'0' * 64}")
    # The line is written once the response has gone: the client can be quicker than the log.
    deadline = time.monotonic() + 5
    while f'sha256:{"0" * 64}" 404' not in mirror.log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = [line for line in mirror.log_path.read_text().splitlines() if "mirror.access" in line]
    blob_lines = [line for line in lines if digest in line]
    assert f" 200 {len(data)} " in blob_lines[0] and " MISS docker.io" in blob_lines[0]
    assert " HIT docker.io" in blob_lines[1]
    assert any(" 404 " in line for line in lines)


def test_json_access_log(tmp_path: Path, registry: Registry, images: dict[str, Image]) -> None:
    process = MirrorProcess(tmp_path / "m", {"docker.io": registry.url}, extra_config='[log]\nformat = "json"').start()
    try:
        httpx.get(f"{process.url}/v2/library/demo/manifests/latest", headers={"Accept": images["demo"].media_type})
    finally:
        process.stop()
    records = [
        json.loads(line.split("mirror.access: ", 1)[1])
        for line in process.log_path.read_text().splitlines()
        if "mirror.access: {" in line
    ]
    [record] = [r for r in records if "/manifests/" in r["path"]]
    assert record["cache"] == "MISS"
    assert record["status"] == 200
    assert record["upstream"] == "docker.io"
    assert record["bytes"] == len(images["demo"].manifest)
