"""SIGKILL mid-download: whatever the moment, the cache holds only complete, verified blobs."""

from __future__ import annotations

import contextlib
import hashlib
import random
import threading
import time
from pathlib import Path

import httpx
from support import MirrorProcess, Pusher, Registry


def wait_for_partial(partial: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not any(path.is_file() for path in partial.rglob("*")):
        assert time.monotonic() < deadline, "no download started"
        time.sleep(0.002)


def test_sigkill_during_twenty_cold_downloads(registry: Registry, tmp_path: Path) -> None:
    rng = random.Random(20)
    with Pusher(registry.url) as pusher:
        blobs = {pusher.blob("library/crash", data): data for data in (rng.randbytes(3 << 20) for _ in range(20))}
    process = MirrorProcess(tmp_path / "m", {"docker.io": registry.url})
    interrupted = 0
    for round_ in range(3):
        process.start()

        def fetch(digest: str) -> None:
            with contextlib.suppress(httpx.HTTPError):  # the mirror dies under us: that is the point
                httpx.get(f"{process.url}/v2/library/crash/blobs/{digest}", timeout=30)

        threads = [threading.Thread(target=fetch, args=(digest,)) for digest in blobs]
        for thread in threads:
            thread.start()
        # The moment is random, but within the downloads: a kill before the first byte or after
        # the last one tests nothing (a fixed delay did both, depending on the machine's load).
        wait_for_partial(process.cache_dir / "partial")
        time.sleep(rng.uniform(0, 0.08))
        process.kill()
        for thread in threads:
            thread.join()

        # Whatever made it into blobs/ is complete and verified.
        for path in (process.cache_dir / "blobs").rglob("*"):
            if path.is_file():
                assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name, f"round {round_}: {path}"
        partials = [path for path in (process.cache_dir / "partial").rglob("*") if path.is_file()]
        interrupted += len(list((process.cache_dir / "tmp").iterdir())) + len(partials)
        # A restart sweeps the temp files and keeps partial downloads; every pull then completes,
        # the partial ones resumed from what they had.
        process.start()
        try:
            assert list((process.cache_dir / "tmp").iterdir()) == []
            for digest, data in blobs.items():
                response = httpx.get(f"{process.url}/v2/library/crash/blobs/{digest}", timeout=30)
                assert response.content == data
            process.wait_idle()
            assert process.stats()["cached_blobs"] == len(blobs)
            assert not [path for path in (process.cache_dir / "partial").rglob("*") if path.is_file()]
        finally:
            process.stop()
        for path in (process.cache_dir / "blobs").rglob("*"):
            if path.is_file():
                path.unlink()
    assert interrupted > 0, "no download was cut short: the kills came too late to test anything"
