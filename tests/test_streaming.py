"""Single-flight streaming under faults a real registry cannot produce: a fake upstream."""

from __future__ import annotations

import hashlib
import os
import random
import time
from pathlib import Path

import httpx
import pytest
from fake_upstream import FakeBlob, FakeUpstream
from support import MirrorProcess


def wait_until(condition, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def temp_files(mirror: MirrorProcess) -> list[Path]:
    return list((mirror.cache_dir / "tmp").iterdir())


def test_first_bytes_arrive_before_the_download_ends(fake_upstream: FakeUpstream, fake_mirror: MirrorProcess) -> None:
    blob = FakeBlob(random.Random(1).randbytes(1 << 20), repeat=4, gate_at=1 << 20)
    digest = fake_upstream.add_blob(blob)
    with httpx.stream("GET", f"{fake_mirror.url}/v2/library/x/blobs/{digest}", timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-length"] == str(blob.size)
        received = bytearray()
        chunks = response.iter_raw()
        while len(received) < 512 * 1024:
            received += next(chunks)
        # The upstream is still holding back three quarters of the blob.
        assert not blob.gate.is_set()
        assert fake_mirror.stats()["inflight_downloads"] == 1
        blob.gate.set()
        for chunk in chunks:
            received += chunk
    assert "sha256:" + hashlib.sha256(received).hexdigest() == digest


def test_late_joiner_gets_the_whole_blob(fake_upstream: FakeUpstream, fake_mirror: MirrorProcess) -> None:
    blob = FakeBlob(random.Random(2).randbytes(1 << 20), repeat=4, gate_at=2 << 20)
    digest = fake_upstream.add_blob(blob)
    url = f"{fake_mirror.url}/v2/library/x/blobs/{digest}"
    with httpx.stream("GET", url, timeout=30) as first:
        chunks = first.iter_raw()
        received = bytearray(next(chunks))
        wait_until(lambda: fake_mirror.stats()["bytes_fetched_from_upstream"] >= 2 << 20)
        with httpx.stream("GET", url, timeout=30) as late:
            late_chunks = late.iter_raw()
            late_received = bytearray(next(late_chunks))
            blob.gate.set()
            for chunk in late_chunks:
                late_received += chunk
        for chunk in chunks:
            received += chunk
    assert bytes(received) == bytes(late_received)
    assert "sha256:" + hashlib.sha256(received).hexdigest() == digest
    assert fake_upstream.gets(digest) == 1
    assert fake_mirror.stats()["coalesced"] == 1


def test_download_finishes_after_every_client_left(fake_upstream: FakeUpstream, fake_mirror: MirrorProcess) -> None:
    blob = FakeBlob(random.Random(3).randbytes(1 << 20), repeat=3, gate_at=1 << 20)
    digest = fake_upstream.add_blob(blob)
    with httpx.stream("GET", f"{fake_mirror.url}/v2/library/x/blobs/{digest}", timeout=30) as response:
        next(response.iter_raw())
    blob.gate.set()
    path = fake_mirror.blob_path(digest)
    wait_until(path.exists)
    assert "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert fake_upstream.gets(digest) == 1
    cached = httpx.get(f"{fake_mirror.url}/v2/library/x/blobs/{digest}")
    assert cached.headers["x-cache"] == "HIT"
    assert fake_upstream.gets(digest) == 1


@pytest.mark.parametrize("fault", ["wrong_bytes", "cut"])
def test_bad_download_is_never_cached_and_is_retried(
    fake_upstream: FakeUpstream, fake_mirror: MirrorProcess, fault: str
) -> None:
    data = random.Random(4).randbytes(1 << 20)
    blob = FakeBlob(data, repeat=2, wrong_bytes=fault == "wrong_bytes", cut_at=(1 << 20) if fault == "cut" else None)
    digest = hashlib.sha256(data * 2).hexdigest()
    fake_upstream.blobs["sha256:" + digest] = blob
    url = f"{fake_mirror.url}/v2/library/x/blobs/sha256:{digest}"
    with pytest.raises(httpx.HTTPError), httpx.stream("GET", url, timeout=30) as response:
        assert response.status_code == 200
        received = b"".join(response.iter_raw())
        # Never reached: the mirror withholds the last byte and cuts the connection.
        assert len(received) < blob.size
    assert not fake_mirror.blob_path("sha256:" + digest).exists()
    wait_until(lambda: temp_files(fake_mirror) == [])
    assert fake_mirror.stats()["inflight_downloads"] == 0
    if fault == "wrong_bytes":
        assert fake_mirror.stats()["digest_mismatches"] == 1
        assert fake_upstream.gets("sha256:" + digest) == 1, "a wrong digest is never resumed"

    if fault == "cut":
        # One resume from the byte it had, which the upstream cut again at once: no progress, no more tries.
        assert [r for d, r in fake_upstream.ranges if d == "sha256:" + digest] == [
            "bytes=0-33554431",
            f"bytes={1 << 20}-{(2 << 20) - 1}",
        ]
    tries = fake_upstream.gets("sha256:" + digest)

    # The next request tries the upstream again, and a good answer is cached.
    blob.wrong_bytes, blob.cut_at = False, None
    assert httpx.get(url, timeout=30).content == data * 2
    assert fake_upstream.gets("sha256:" + digest) == tries + 1
    fake_mirror.wait_idle()
    assert fake_mirror.blob_path("sha256:" + digest).exists()


def test_memory_stays_flat_for_a_large_blob(fake_upstream: FakeUpstream, fake_mirror: MirrorProcess) -> None:
    size_gib = 1
    blob = FakeBlob(random.Random(5).randbytes(1 << 20), repeat=size_gib * 1024, chunk=256 * 1024)
    digest = fake_upstream.add_blob(blob)
    assert fake_mirror.process is not None
    status = Path(f"/proc/{fake_mirror.process.pid}/status")

    def rss_kib() -> int:
        line = next(line for line in status.read_text().splitlines() if line.startswith("VmRSS:"))
        return int(line.split()[1])

    httpx.get(f"{fake_mirror.url}/v2/library/x/blobs/{fake_upstream.add_blob(FakeBlob(b'warm-up'))}")
    before = rss_kib()
    peak = before
    h = hashlib.sha256()
    with httpx.stream("GET", f"{fake_mirror.url}/v2/library/x/blobs/{digest}", timeout=120) as response:
        for i, chunk in enumerate(response.iter_raw()):
            h.update(chunk)
            if i % 256 == 0:
                peak = max(peak, rss_kib())
    assert "sha256:" + h.hexdigest() == digest
    growth_mib = (peak - before) / 1024
    # The blob comes as 8 ranges at once (1 GiB is over parallel_threshold). With httpx's default
    # network backend the event loop read each fast socket dry before pausing it: 45-62 MiB here;
    # mirror.upstream.network pauses at 256 KiB a connection: 8.5 MiB.
    assert growth_mib < 40, f"mirror grew by {growth_mib:.1f} MiB while streaming {size_gib} GiB"
    fake_mirror.wait_idle()
    assert os.path.getsize(fake_mirror.blob_path(digest)) == blob.size


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_transient_upstream_failures_are_retried(
    fake_upstream: FakeUpstream, fake_mirror: MirrorProcess, status: int
) -> None:
    digest = fake_upstream.add_blob(FakeBlob(b"worth the wait" * 1000))
    fake_upstream.blob_failures = 2
    fake_upstream.failure_status = status
    response = httpx.get(f"{fake_mirror.url}/v2/library/x/blobs/{digest}")
    assert response.status_code == 200
    assert fake_upstream.gets(digest) == 3
    assert fake_mirror.stats()["upstream_retries"] == 2


def test_persistent_upstream_failure_is_a_clear_503(fake_upstream: FakeUpstream, fake_mirror: MirrorProcess) -> None:
    digest = fake_upstream.add_blob(FakeBlob(b"never"))
    fake_upstream.blob_failures = 10
    response = httpx.get(f"{fake_mirror.url}/v2/library/x/blobs/{digest}")
    assert response.status_code == 503
    assert "docker.io answered 503" in response.json()["errors"][0]["message"]
    assert fake_upstream.gets(digest) == 3  # the first try and two retries
    assert not fake_mirror.blob_path(digest).exists()


@pytest.mark.parametrize(("cut_at", "ranges"), [(0.5, True), (0.9, True), (0.5, False)])
def test_a_cut_download_resumes_where_it_stopped(
    fake_upstream: FakeUpstream, fake_mirror: MirrorProcess, cut_at: float, ranges: bool
) -> None:
    """The client sees one whole, verified body; the upstream sees one range request per cut."""
    data = random.Random(6).randbytes(1 << 20)
    blob = FakeBlob(data, repeat=4, cut_at=int(4 * len(data) * cut_at), cut_times=1, ranges=ranges)
    digest = fake_upstream.add_blob(blob)
    with httpx.stream("GET", f"{fake_mirror.url}/v2/library/x/blobs/{digest}", timeout=30) as response:
        assert response.status_code == 200
        body = b"".join(response.iter_raw())
    assert "sha256:" + hashlib.sha256(body).hexdigest() == digest and len(body) == blob.size
    asked = [r for d, r in fake_upstream.ranges if d == digest]
    # An upstream that ignores Range sends it all again: the mirror skips what it has.
    assert asked == ["bytes=0-33554431", f"bytes={blob.cut_at}-{blob.size - 1}"]
    fake_mirror.wait_idle()
    assert fake_mirror.blob_path(digest).exists()
    stats = fake_mirror.stats()
    assert stats["download_resumes"] == 1
    resumed = blob.size - blob.cut_at if ranges else blob.size
    assert stats["bytes_fetched_from_upstream"] == blob.cut_at + resumed


def test_a_resume_asks_the_registry_again_for_a_fresh_cdn_url(
    fake_upstream: FakeUpstream, fake_mirror: MirrorProcess
) -> None:
    """Signed CDN URLs expire (Docker Hub's last minutes): a resume never reuses the old one."""
    fake_upstream.cdn_redirects = True
    data = random.Random(8).randbytes(1 << 20)
    blob = FakeBlob(data, repeat=4, cut_at=2 << 20, cut_times=1)
    digest = fake_upstream.add_blob(blob)
    body = httpx.get(f"{fake_mirror.url}/v2/library/x/blobs/{digest}", timeout=30).content
    assert "sha256:" + hashlib.sha256(body).hexdigest() == digest
    # Two registry requests, each redirected to a URL of its own that worked; the old one was never retried.
    assert fake_upstream.gets(digest) == 2
    assert [status for _, status in fake_upstream.cdn_requests] == [200, 200]
    assert len({token for token, _ in fake_upstream.cdn_requests}) == 2
    assert [r for d, r in fake_upstream.ranges if d == digest] == [
        "bytes=0-33554431",
        f"bytes={2 << 20}-{blob.size - 1}",
    ]
