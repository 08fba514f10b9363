"""The download engine against upstreams that pace each connection: parallel ranges, cold ranged reads, the caps."""

from __future__ import annotations

import contextlib
import hashlib
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from fake_upstream import FakeBlob, FakeUpstream
from pacing import PacedRequest, PacedUpstream
from support import MirrorProcess, Pusher, Registry

from mirror.link import Link, LinkPolicy

MiB = 1 << 20
RATE = 16 * MiB  # what nginx gives each connection ("16m")
FIRST_RANGE = Link().first_range() or 0  # with the default settings
FIRST_RANGE_8M = Link(LinkPolicy(parallel_threshold=8 * MiB)).first_range() or 0  # with parallel_threshold = "8MiB"


@pytest.fixture(scope="module")
def big_blob(registry: Registry) -> tuple[str, bytes]:
    """A 128 MiB layer in the session's registry."""
    data = random.Random(128).randbytes(128 * MiB)
    with Pusher(registry.url) as pusher:
        digest = pusher.blob("library/big", data)
    return digest, data


@pytest.fixture
def paced(paced_upstream: Callable[[str], PacedUpstream]) -> PacedUpstream:
    return paced_upstream("16m")


@pytest.fixture
def mirror(tmp_path: Path, paced: PacedUpstream) -> Iterator[MirrorProcess]:
    process = MirrorProcess(tmp_path / "m", {"docker.io": paced.url}).start()
    try:
        yield process
    finally:
        process.stop()


def timed_get(url: str, headers: dict[str, str] | None = None) -> tuple[float, bytes, int]:
    started = time.monotonic()
    response = httpx.get(url, headers=headers, timeout=120)
    return time.monotonic() - started, response.content, response.status_code


def most_at_once(requests: list[PacedRequest]) -> int:
    """The most requests that were being served at the same moment."""
    events = sorted([(r.started, 1) for r in requests] + [(r.ended, -1) for r in requests])
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    return peak


def test_a_large_blob_comes_faster_than_direct_as_parallel_ranges(
    big_blob: tuple[str, bytes], paced: PacedUpstream, mirror: MirrorProcess
) -> None:
    digest, data = big_blob
    direct, body, _ = timed_get(f"{paced.url}/v2/library/big/blobs/{digest}")
    assert body == data
    through, body, _ = timed_get(f"{mirror.url}/v2/library/big/blobs/{digest}")
    assert hashlib.sha256(body).hexdigest() == digest.split(":")[1]
    print(f"128 MiB: direct {direct:.2f} s, through the mirror {through:.2f} s")
    assert through * 3 <= direct, f"direct {direct:.1f} s, through the mirror {through:.1f} s"

    mirror.wait_idle()
    gets = paced.wait_for(digest, 1 + 7)[1:]  # the first was the direct download
    assert sum(r.body_bytes for r in gets) <= 1.01 * len(data), "upstream bytes within 1 % of the blob"
    assert f"bytes=0-{FIRST_RANGE - 1}" in [r.range for r in gets]
    # The first request's range (half the threshold, 32 MiB) and 16 MiB pieces, all at once.
    assert len(gets) == 7 and most_at_once(gets) == 7
    assert mirror.blob_path(digest).read_bytes() == data
    assert mirror.stats()["parallel_downloads"] == 1


def test_an_upstream_that_ignores_range_gets_one_stream(fake_upstream: FakeUpstream, tmp_path: Path) -> None:
    blob = FakeBlob(random.Random(3).randbytes(MiB), repeat=24, ranges=False)
    digest = fake_upstream.add_blob(blob)
    mirror = MirrorProcess(
        tmp_path / "m", {"docker.io": fake_upstream.url}, upstream_config='parallel_threshold = "8MiB"'
    )
    with mirror_started(mirror):
        body = httpx.get(f"{mirror.url}/v2/library/x/blobs/{digest}", timeout=60).content
        assert "sha256:" + hashlib.sha256(body).hexdigest() == digest
        mirror.wait_idle()
        assert [r for d, r in fake_upstream.ranges if d == digest] == [f"bytes=0-{FIRST_RANGE_8M - 1}"]
        stats = mirror.stats()
        assert stats["bytes_fetched_from_upstream"] == blob.size
        assert stats["parallel_downloads"] == 0


@pytest.mark.parametrize("cdn", [False, True])
def test_a_range_cut_short_is_resumed_on_its_own(fake_upstream: FakeUpstream, tmp_path: Path, cdn: bool) -> None:
    """Pieces of 4 MiB: the cut one (at 30 MiB, in the last) resumes from there; the others never knew.

    Behind a CDN with one-use signed URLs, every range and the resume ask the registry for a URL of their own.
    """
    fake_upstream.cdn_redirects = cdn
    blob = FakeBlob(random.Random(4).randbytes(MiB), repeat=32, cut_at=30 * MiB, cut_times=1)
    digest = fake_upstream.add_blob(blob)
    mirror = MirrorProcess(
        tmp_path / "m", {"docker.io": fake_upstream.url}, upstream_config='parallel_threshold = "8MiB"'
    )
    with mirror_started(mirror):
        body = httpx.get(f"{mirror.url}/v2/library/x/blobs/{digest}", timeout=60).content
        assert "sha256:" + hashlib.sha256(body).hexdigest() == digest
        mirror.wait_idle()
        asked = [r for d, r in fake_upstream.ranges if d == digest]
        assert asked[0] == f"bytes=0-{FIRST_RANGE_8M - 1}" and len(asked) == 8 + 1
        assert f"bytes={30 * MiB}-{32 * MiB - 1}" in asked, asked
        stats = mirror.stats()
        assert stats["download_resumes"] == 1 and stats["parallel_downloads"] == 1
        if cdn:
            assert [status for _, status in fake_upstream.cdn_requests] == [200] * (8 + 1)
        assert mirror.blob_path(digest).exists()


def test_an_expired_cdn_url_is_asked_for_again(fake_upstream: FakeUpstream, fake_mirror: MirrorProcess) -> None:
    """The registry's redirect leads to a URL the CDN refuses (expired): the registry is asked again."""
    fake_upstream.cdn_redirects = True
    fake_upstream.cdn_expired = 1
    blob = FakeBlob(random.Random(5).randbytes(MiB), repeat=2)
    digest = fake_upstream.add_blob(blob)
    body = httpx.get(f"{fake_mirror.url}/v2/library/x/blobs/{digest}", timeout=60).content
    assert "sha256:" + hashlib.sha256(body).hexdigest() == digest
    assert [status for _, status in fake_upstream.cdn_requests] == [403, 200]
    assert fake_upstream.gets(digest) == 2


def test_a_cold_ranged_read_does_not_wait_for_the_download(
    big_blob: tuple[str, bytes], paced: PacedUpstream, mirror: MirrorProcess
) -> None:
    """A lazy pull reads a layer's footer first: it gets it from a ranged request of its own."""
    digest, data = big_blob
    start = len(data) - MiB
    seconds, body, status = timed_get(
        f"{mirror.url}/v2/library/big/blobs/{digest}", headers={"Range": f"bytes={start}-{len(data) - 1}"}
    )
    assert status == 206 and body == data[start:]
    print(f"cold ranged read of the last MiB: {seconds:.3f} s")
    one_connection = len(data) / RATE  # 8 s: what waiting for one stream would take
    assert seconds < one_connection / 4, f"{seconds:.1f} s for the last MiB"

    mirror.wait_idle()  # the download the read started goes on into the cache, verified
    assert mirror.blob_path(digest).read_bytes() == data
    assert mirror.stats()["cold_range_reads"] == 1
    gets = paced.wait_for(digest, 8)  # the download's 7 ranges, and the read's own
    assert f"bytes={start}-{len(data) - 1}" in [r.range for r in gets]
    assert paced.body_bytes(digest) <= 1.01 * len(data) + MiB, "the blob once, plus that range"


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGKILL"])
def test_a_restart_resumes_every_range_from_what_is_on_disk(
    big_blob: tuple[str, bytes], paced_upstream: Callable[[str], PacedUpstream], tmp_path: Path, stop: str
) -> None:
    """Stopped mid-download (the drain cut short), the next start fetches only what no range had."""
    digest, data = big_blob
    paced = paced_upstream("4m")  # 4.6 s for the whole blob in 7 ranges: the stop comes well before its end
    mirror = MirrorProcess(tmp_path / "m", {"docker.io": paced.url}, drain_timeout="0.5s")
    partial = mirror.cache_dir / "partial" / "sha256" / digest.split(":")[1]
    url = f"{mirror.url}/v2/library/big/blobs/{digest}"
    with mirror_started(mirror):
        client = threading.Thread(target=get_until_cut, args=(url,))
        client.start()
        deadline = time.monotonic() + 30
        while sum(downloads_by_digest(mirror).values()) < 48 * MiB:
            assert time.monotonic() < deadline, "the download does not progress"
            time.sleep(0.05)
        mirror.kill() if stop == "SIGKILL" else mirror.stop()
        client.join()
        assert partial.exists() and partial.with_name(partial.name + ".ranges").exists()
        assert not mirror.blob_path(digest).exists(), "nothing looks complete"
        before = sum(r.body_bytes for r in paced.wait_for(digest, 7))  # logged once nginx sees the cut

        mirror.start()
        body = httpx.get(url, timeout=60).content
        assert hashlib.sha256(body).hexdigest() == digest.split(":")[1]
        mirror.wait_idle()
        assert mirror.blob_path(digest).read_bytes() == data and not partial.exists()
        time.sleep(0.5)  # nginx logs a request when it sees it end
        served = paced.body_bytes(digest)
        print(f"{stop}: {before / MiB:.1f} MiB before the stop, {served / len(data):.3f} x the blob in all")
        # SIGTERM saves the map at the end; a kill loses at most its last quarter second of ranges.
        assert served <= (1.05 if stop == "SIGTERM" else 1.5) * len(data)
        # The stop came after 48 MiB; a kill loses the last map interval and what was in flight
        # (seen: ~12 MiB), so the restart still reuses well over 24 MiB of it.
        assert served - before < len(data) - 24 * MiB, "the restart resumed from what was on disk"


def test_max_connections_caps_every_blob_together(registry: Registry, paced: PacedUpstream, tmp_path: Path) -> None:
    rng = random.Random(5)
    with Pusher(registry.url) as pusher:
        blobs = {pusher.blob("library/two", data): data for data in (rng.randbytes(32 * MiB) for _ in range(2))}
    mirror = MirrorProcess(
        tmp_path / "m", {"docker.io": paced.url}, upstream_config='parallel_threshold = "8MiB"\nmax_connections = 3'
    )
    with mirror_started(mirror):
        threads = [
            threading.Thread(
                target=httpx.get, args=(f"{mirror.url}/v2/library/two/blobs/{digest}",), kwargs={"timeout": 60}
            )
            for digest in blobs
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        mirror.wait_idle()
        for digest, data in blobs.items():
            assert mirror.blob_path(digest).read_bytes() == data
        gets = [r for digest in blobs for r in paced.blob_gets(digest)]
        assert most_at_once(gets) <= 3, gets
        assert len(gets) > 2, "the blobs still came in ranges, as connections became free"


def test_max_bandwidth_holds_and_is_shared(registry: Registry, tmp_path: Path) -> None:
    """8 cold blobs at once from a fast upstream, capped at 40 Mbit/s: measured over 20 s."""
    rng = random.Random(6)
    with Pusher(registry.url) as pusher:
        digests = [pusher.blob("library/capped", rng.randbytes(16 * MiB)) for _ in range(8)]
    mirror = MirrorProcess(tmp_path / "m", {"docker.io": registry.url}, upstream_config='max_bandwidth = "40Mbit"')
    with mirror_started(mirror):
        threads = [
            threading.Thread(target=get_quietly, args=(f"{mirror.url}/v2/library/capped/blobs/{digest}",))
            for digest in digests
        ]
        for thread in threads:
            thread.start()
        time.sleep(2)  # past the start: connections opened, the burst spent
        first, started = mirror.stats(), time.monotonic()
        time.sleep(20)
        last, elapsed = mirror.stats(), time.monotonic() - started
        rate = (last["bytes_fetched_from_upstream"] - first["bytes_fetched_from_upstream"]) / elapsed
        received = list(downloads_by_digest(mirror).values())
        print(f"max_bandwidth 40Mbit: {rate / 1e6:.3f} MB/s over {elapsed:.1f} s; shares {sorted(received)}")
        assert abs(rate - 5_000_000) <= 0.1 * 5_000_000, f"{rate / 1e6:.2f} MB/s against a cap of 5 MB/s"
        assert len(received) == 8 and max(received) <= 1.5 * min(received), f"unfair shares: {received}"
        for thread in threads:
            thread.join()


def test_prefetch_yields_to_clients(registry: Registry, tmp_path: Path) -> None:
    """A prefetch (Priority: u=7, as `mirror prefetch` sends) slows to a trickle while a client's download runs."""
    rng = random.Random(7)
    with Pusher(registry.url) as pusher:
        background = pusher.blob("library/yield", rng.randbytes(32 * MiB))
        foreground = pusher.blob("library/yield", rng.randbytes(16 * MiB))
    mirror = MirrorProcess(tmp_path / "m", {"docker.io": registry.url}, upstream_config='max_bandwidth = "40Mbit"')
    with mirror_started(mirror):
        prefetch = threading.Thread(
            target=get_quietly, args=(f"{mirror.url}/v2/library/yield/blobs/{background}", {"Priority": "u=7"})
        )
        prefetch.start()
        time.sleep(1)
        before = downloads_by_digest(mirror)[background]
        seconds, body, _ = timed_get(f"{mirror.url}/v2/library/yield/blobs/{foreground}")
        during = downloads_by_digest(mirror)[background] - before
        assert hashlib.sha256(body).hexdigest() == foreground.split(":")[1]
        print(f"prefetch yields: the client's 16 MiB in {seconds:.2f} s; the prefetch took {during} bytes meanwhile")
        alone = len(body) / 5_000_000  # the client's blob with the whole cap: 3.4 s; shared evenly it would be 6.7 s
        assert seconds < 1.25 * alone, f"the client's download took {seconds:.1f} s, alone it takes {alone:.1f} s"
        assert during < 0.15 * len(body), f"the prefetch took {during} bytes meanwhile"
        prefetch.join()
        mirror.wait_idle()
        assert mirror.blob_path(background).exists()


def get_quietly(url: str, headers: dict[str, str] | None = None) -> None:
    httpx.get(url, headers=headers, timeout=120)


def get_until_cut(url: str) -> None:
    with contextlib.suppress(httpx.HTTPError):  # the mirror stops under it: that is the point
        httpx.get(url, timeout=120)


def downloads_by_digest(mirror: MirrorProcess) -> dict[str, int]:
    """Bytes received so far by each download in flight, from the dashboard's API."""
    inflight = httpx.get(f"{mirror.url}/api/dashboard", timeout=10).json()["inflight"]
    return {download["digest"]: download["received"] for download in inflight}


@contextmanager
def mirror_started(mirror: MirrorProcess) -> Iterator[MirrorProcess]:
    mirror.start()
    try:
        yield mirror
    finally:
        mirror.stop()
