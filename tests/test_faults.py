"""Upstream faults a real registry cannot produce: stalls, drips, redirect loops, huge manifests."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fake_upstream import FakeBlob, FakeUpstream
from support import Image, MirrorProcess, Registry
from test_pull import skopeo_copy, verify_dir_copy


@pytest.fixture
def impatient(tmp_path: Path, fake_upstream: FakeUpstream) -> Iterator[MirrorProcess]:
    """A mirror with a 1 s read timeout towards the fake upstream."""
    process = MirrorProcess(
        tmp_path / "m", {"docker.io": fake_upstream.url}, upstream_config='read_timeout = "1s"'
    ).start()
    try:
        yield process
    finally:
        process.stop()


def test_stall_mid_blob_cuts_off_and_caches_nothing(fake_upstream: FakeUpstream, impatient: MirrorProcess) -> None:
    blob = FakeBlob(random.Random(1).randbytes(1 << 20), repeat=2, gate_at=1 << 20)  # never released
    digest = fake_upstream.add_blob(blob)
    started = time.monotonic()
    with pytest.raises(httpx.HTTPError), httpx.stream("GET", f"{impatient.url}/v2/x/y/blobs/{digest}") as r:
        b"".join(r.iter_raw())
    assert time.monotonic() - started < 10
    impatient.wait_idle()
    assert not impatient.blob_path(digest).exists()
    assert list((impatient.cache_dir / "tmp").iterdir()) == []


def test_stall_before_any_byte_is_retried_then_a_clear_503(
    fake_upstream: FakeUpstream, impatient: MirrorProcess
) -> None:
    digest = fake_upstream.add_blob(FakeBlob(b"late"))
    fake_upstream.header_delay = 3
    response = httpx.get(f"{impatient.url}/v2/x/y/blobs/{digest}", timeout=30)
    assert response.status_code == 503
    message = response.json()["errors"][0]["message"]
    assert 'stopped answering for longer than [upstreams."docker.io"] read_timeout' in message
    assert fake_upstream.gets(digest) == 3


def test_slow_drip_streams_while_everything_else_is_served(
    fake_upstream: FakeUpstream, fake_mirror: MirrorProcess
) -> None:
    drip = FakeBlob(b"x" * 1024, repeat=8, chunk=1024, delay=0.5)  # 1 KB every half second
    drip_digest = fake_upstream.add_blob(drip)
    quick = fake_upstream.add_blob(FakeBlob(b"quick" * 1000))
    received: list[bytes] = []

    def slow_client() -> None:
        with httpx.stream("GET", f"{fake_mirror.url}/v2/x/y/blobs/{drip_digest}", timeout=30) as response:
            received.extend(response.iter_raw())

    thread = threading.Thread(target=slow_client)
    thread.start()
    time.sleep(0.5)
    for _ in range(20):  # the drip does not hold anyone else up
        started = time.monotonic()
        assert httpx.get(f"{fake_mirror.url}/v2/x/y/blobs/{quick}").status_code == 200
        assert time.monotonic() - started < 1.0
    thread.join()
    assert b"".join(received) == b"x" * 8192


def test_redirect_loop_is_a_clear_error(fake_upstream: FakeUpstream, fake_mirror: MirrorProcess) -> None:
    digest = fake_upstream.add_blob(FakeBlob(b"unreachable"))
    fake_upstream.redirect_loop = True
    response = httpx.get(f"{fake_mirror.url}/v2/x/y/blobs/{digest}", timeout=30)
    assert response.status_code == 503
    assert "redirected too many times" in response.json()["errors"][0]["message"]
    assert fake_upstream.gets(digest) <= 6


def test_oversized_manifest_is_refused(fake_upstream: FakeUpstream, fake_mirror: MirrorProcess) -> None:
    fake_upstream.manifests["huge"] = (b"{" + b" " * (5 << 20) + b"}", "application/vnd.oci.image.manifest.v1+json")
    response = httpx.get(f"{fake_mirror.url}/v2/x/y/manifests/huge", timeout=30)
    assert response.status_code == 400
    assert response.json()["errors"][0]["code"] == "MANIFEST_INVALID"
    assert "larger than" in response.json()["errors"][0]["message"]


def test_mirror_starts_and_serves_its_cache_while_the_upstream_is_down(
    tmp_path: Path, registry: Registry, images: dict[str, Image]
) -> None:
    process = MirrorProcess(tmp_path / "m", {"docker.io": registry.url}).start()
    try:
        skopeo_copy(process, "library/demo:latest", tmp_path / "warm")
        process.wait_idle()
    finally:
        process.stop()
    process.upstreams = {"docker.io": "http://127.0.0.1:9"}  # nothing listens there
    process.start()
    try:
        assert httpx.get(f"{process.url}/v2/").status_code == 200
        skopeo_copy(process, "library/demo:latest", tmp_path / "offline")
        verify_dir_copy(tmp_path / "offline", images["demo"])
        assert httpx.get(f"{process.url}/v2/library/multi/manifests/latest").status_code == 503
    finally:
        process.stop()


def test_a_dead_upstream_is_not_waited_for_again_and_again(tmp_path: Path, fake_upstream: FakeUpstream) -> None:
    body = b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "layers": []}'
    fake_upstream.manifests["cached"] = (body, "application/vnd.oci.image.manifest.v1+json")
    process = MirrorProcess(
        tmp_path / "m",
        {"docker.io": fake_upstream.url},
        extra_config='tag_ttl = "0s"',
        upstream_config='read_timeout = "1s"',
    ).start()
    try:
        assert httpx.get(f"{process.url}/v2/x/y/manifests/cached").status_code == 200
        fake_upstream.header_delay = 30  # every blob request now stalls past the read timeout
        digest = fake_upstream.add_blob(FakeBlob(b"stalled"))
        for _ in range(3):
            assert httpx.get(f"{process.url}/v2/x/y/blobs/{digest}", timeout=30).status_code == 503
        asked = fake_upstream.gets(digest)
        started = time.monotonic()
        failed_fast = httpx.get(f"{process.url}/v2/x/y/blobs/{digest}", timeout=30)
        assert time.monotonic() - started < 0.5
        assert failed_fast.status_code == 503
        assert "not asking it again" in failed_fast.json()["errors"][0]["message"]
        assert fake_upstream.gets(digest) == asked
        stale = httpx.get(f"{process.url}/v2/x/y/manifests/cached")  # a cached tag: served at once
        assert stale.headers["x-cache"] == "STALE"
    finally:
        fake_upstream.header_delay = 0
        process.stop()


def test_faults_leak_no_file_handles(fake_upstream: FakeUpstream, impatient: MirrorProcess) -> None:
    assert impatient.process is not None
    fds = Path(f"/proc/{impatient.process.pid}/fd")
    good = fake_upstream.add_blob(FakeBlob(b"fine" * 1000))
    httpx.get(f"{impatient.url}/v2/x/y/blobs/{good}")
    impatient.wait_idle()
    before = len(list(fds.iterdir()))
    for round_ in range(5):
        cut = fake_upstream.add_blob(FakeBlob(random.Random(round_).randbytes(1 << 20), cut_at=1 << 19))
        wrong = fake_upstream.add_blob(FakeBlob(random.Random(round_ + 9).randbytes(1 << 16), wrong_bytes=True))
        stalled = fake_upstream.add_blob(FakeBlob(random.Random(round_ + 99).randbytes(1 << 20), gate_at=1 << 19))
        for digest in (cut, wrong, stalled):
            with pytest.raises(httpx.HTTPError), httpx.stream("GET", f"{impatient.url}/v2/x/y/blobs/{digest}") as r:
                b"".join(r.iter_raw())
        with httpx.stream("GET", f"{impatient.url}/v2/x/y/blobs/{good}") as r:  # a client that leaves early
            next(r.iter_raw())
    impatient.wait_idle()
    time.sleep(0.5)
    after = len(list(fds.iterdir()))
    assert after <= before + 2, f"{after - before} more file descriptors after 20 faults"
    assert impatient.stats()["inflight_downloads"] == 0
    assert list((impatient.cache_dir / "tmp").iterdir()) == []
