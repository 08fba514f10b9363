"""Soak: wrk on cached manifests and blobs (64 connections) while 32 cold pulls storm in.

Bounded: MIRROR_SOAK_SECONDS (default 15; `scripts/soak` runs 60).
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from support import Image, MirrorProcess, Pusher, Registry
from test_pull import skopeo_copy, verify_dir_copy
from tools import tool

SECONDS = int(os.environ.get("MIRROR_SOAK_SECONDS", "15"))


def wrk(url: str, connections: int, seconds: int, accept: str) -> subprocess.Popen[str]:
    command = [
        tool("wrk"),
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-H",
        f"Accept: {accept}",
        url,
    ]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def parse_wrk(output: str) -> tuple[int, int]:
    """(requests, failed requests: socket errors plus non-2xx/3xx answers)."""
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    failed = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return requests, failed + (int(non_2xx.group(1)) if non_2xx else 0)


def test_soak(registry: Registry, images: dict[str, Image], tmp_path: Path) -> None:
    with Pusher(registry.url) as pusher:
        storm = [pusher.image(f"library/storm{i}", "latest", [512 * 1024, 4096], seed=500 + i) for i in range(16)]
    process = MirrorProcess(tmp_path / "m", {"docker.io": registry.url}, server_config='log_level = "warning"').start()
    assert process.process is not None
    status = Path(f"/proc/{process.process.pid}/status")

    def rss_mib() -> float:
        line = next(line for line in status.read_text().splitlines() if line.startswith("VmRSS:"))
        return int(line.split()[1]) / 1024

    try:
        demo = images["demo"]
        manifest_url = f"{process.url}/v2/library/demo/manifests/latest"
        blob_digest = max(demo.blobs, key=lambda d: len(demo.blobs[d]))
        blob_url = f"{process.url}/v2/library/demo/blobs/{blob_digest}"
        assert httpx.get(manifest_url, headers={"Accept": demo.media_type}).status_code == 200
        assert httpx.get(blob_url).status_code == 200
        process.wait_idle()
        # Warm up once so that the RSS baseline includes the server's steady state.
        warm = wrk(manifest_url, 16, 2, demo.media_type)
        warm.communicate()
        baseline = rss_mib()
        samples: list[float] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                samples.append(rss_mib())
                time.sleep(0.5)

        sampler = threading.Thread(target=sample)
        sampler.start()
        loads = [wrk(manifest_url, 32, SECONDS, demo.media_type), wrk(blob_url, 32, SECONDS, demo.media_type)]
        time.sleep(1)

        def pull(job: tuple[int, Image]) -> None:
            n, image = job
            skopeo_copy(process, f"{image.repository}:latest", tmp_path / f"storm{n}")
            verify_dir_copy(tmp_path / f"storm{n}", image)

        with ThreadPoolExecutor(32) as pool:
            list(pool.map(pull, enumerate(storm * 2)))
        outputs = [load.communicate(timeout=SECONDS + 60)[0] for load in loads]
        stop.set()
        sampler.join()
        end = rss_mib()
    finally:
        process.stop()
    results = [parse_wrk(output) for output in outputs]
    total = sum(requests for requests, _ in results)
    failed = sum(failures for _, failures in results)
    print(
        f"soak {SECONDS}s: {total} requests ({results[0][0]} manifest, {results[1][0]} blob), {failed} failed, "
        f"32 cold pulls verified; RSS baseline {baseline:.1f} MiB, peak {max(samples):.1f}, end {end:.1f}"
    )
    assert failed == 0, outputs
    assert total > SECONDS * 100
    assert end - baseline < 25, f"RSS grew from {baseline:.1f} to {end:.1f} MiB"
