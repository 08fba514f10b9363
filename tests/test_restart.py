"""A restart mid-download keeps what was downloaded: the next request resumes it with Range."""

from __future__ import annotations

import hashlib
import random
import threading
from pathlib import Path

import httpx
import pytest
from fake_upstream import FakeBlob, FakeUpstream
from support import MirrorProcess
from test_streaming import wait_until

from mirror.link import Link

FIRST_RANGE = Link().first_range() or 0  # with the default settings


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGKILL"])
def test_a_restart_resumes_the_partial_download(fake_upstream: FakeUpstream, tmp_path: Path, stop: str) -> None:
    half = 4 << 20
    blob = FakeBlob(random.Random(7).randbytes(1 << 20), repeat=8, gate_at=half)  # the upstream stalls halfway
    digest = fake_upstream.add_blob(blob)
    url_path = f"/v2/library/x/blobs/{digest}"
    mirror = MirrorProcess(tmp_path / "m", {"docker.io": fake_upstream.url})
    partial = mirror.cache_dir / "partial" / "sha256" / digest.split(":")[1]

    def first_client() -> None:
        try:
            with httpx.stream("GET", f"{mirror.url}{url_path}", timeout=30) as response:
                for _ in response.iter_raw():
                    pass
        except httpx.HTTPError:
            pass  # cut by the restart, as expected

    try:
        mirror.start()
        client = threading.Thread(target=first_client)
        client.start()
        wait_until(lambda: partial.exists() and partial.stat().st_size >= half)
        if stop == "SIGKILL":
            mirror.kill()
        else:
            mirror.stop()  # SIGTERM: the stalled download is cancelled, its partial kept
        client.join(30)
        assert partial.exists() and partial.stat().st_size == half, "what was downloaded is kept"
        assert not mirror.blob_path(digest).exists(), "nothing looks complete"

        blob.gate.set()  # the upstream flows again
        mirror.start()
        body = httpx.get(f"{mirror.url}{url_path}", timeout=30).content
        assert "sha256:" + hashlib.sha256(body).hexdigest() == digest
        assert [r for d, r in fake_upstream.ranges if d == digest] == [
            "bytes=0-33554431",
            f"bytes={half}-{half + FIRST_RANGE - 1}",
        ]
        mirror.wait_idle()
        assert mirror.stats()["bytes_fetched_from_upstream"] == blob.size - half, "only the rest came again"
        assert mirror.blob_path(digest).exists() and not partial.exists()
    finally:
        blob.gate.set()
        mirror.stop()


@pytest.mark.parametrize("left", ["whole", "too long"])
def test_a_partial_download_that_needs_no_resume(fake_upstream: FakeUpstream, tmp_path: Path, left: str) -> None:
    """Killed between the last byte and the rename: nothing to fetch. Longer than the blob: start afresh."""
    blob = FakeBlob(random.Random(9).randbytes(1 << 20), repeat=2)
    digest = fake_upstream.add_blob(blob)
    mirror = MirrorProcess(tmp_path / "m", {"docker.io": fake_upstream.url})
    partial = mirror.cache_dir / "partial" / "sha256" / digest.split(":")[1]
    partial.parent.mkdir(parents=True)
    content = blob.block * blob.repeat
    partial.write_bytes(content if left == "whole" else content + b"junk after the end")
    try:
        mirror.start()
        body = httpx.get(f"{mirror.url}/v2/library/x/blobs/{digest}", timeout=30).content
        assert body == content
        mirror.wait_idle()
        assert mirror.blob_path(digest).exists() and not partial.exists()
        asked = [r for d, r in fake_upstream.ranges if d == digest]
        assert asked == (
            []
            if left == "whole"
            else [f"bytes={len(content) + 18}-{len(content) + 18 + FIRST_RANGE - 1}", f"bytes=0-{FIRST_RANGE - 1}"]
        )
    finally:
        mirror.stop()
