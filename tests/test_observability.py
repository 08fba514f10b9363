"""What an on-call engineer reads: latency histograms, mirror_info, and a request id through the tiers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
from pacing import PacedUpstream
from prometheus_client.parser import text_string_to_metric_families
from support import Image, MirrorProcess, Registry
from tools import tool

from mirror import __version__


def samples(mirror: MirrorProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{mirror.url}/metrics").text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_histograms_count_what_was_requested(mirror: MirrorProcess, images: dict[str, Image]) -> None:
    demo = images["demo"]
    url = f"{mirror.url}/v2/library/demo/manifests/latest"
    for _ in range(3):  # a miss, then hits (from the protocol's fast path)
        assert httpx.get(url, headers={"Accept": demo.media_type}).status_code == 200
    layer = max(demo.blobs, key=lambda digest: len(demo.blobs[digest]))
    for _ in range(2):
        assert httpx.get(f"{mirror.url}/v2/library/demo/blobs/{layer}").status_code == 200
        mirror.wait_idle()
    found = samples(mirror)

    def count(name: str, route: str, cache: str) -> float:
        return found[(f"{name}_count", (("cache", cache), ("route", route)))]

    for name in ("mirror_request_first_byte_seconds", "mirror_request_duration_seconds"):
        assert count(name, "manifest", "MISS") == 1
        assert count(name, "manifest", "HIT") == 2
        assert count(name, "blob", "MISS") == 1
        assert count(name, "blob", "HIT") == 1
        inf = found[(f"{name}_bucket", (("cache", "HIT"), ("le", "+Inf"), ("route", "manifest")))]
        assert inf == 2
    first = found[("mirror_request_first_byte_seconds_sum", (("cache", "MISS"), ("route", "blob")))]
    total = found[("mirror_request_duration_seconds_sum", (("cache", "MISS"), ("route", "blob")))]
    assert 0 < first <= total
    [info] = [labels for (name, labels) in found if name == "mirror_info"]
    assert dict(info)["version"] == __version__ and len(dict(info)["config_hash"]) == 12


def test_a_request_id_follows_a_pull_through_the_tiers(
    registry: Registry, images: dict[str, Image], tmp_path: Path
) -> None:
    demo = images["demo"]
    with PacedUpstream(registry, tmp_path / "nginx", rate="0") as upstream:
        regional = MirrorProcess(tmp_path / "regional", {"docker.io": upstream.url}).start()
        keys = {"docker.io": f'mirrors = ["{regional.url}"]\nmirrors_only = true'}
        edge = MirrorProcess(tmp_path / "edge", {"docker.io": registry.url}, upstream_keys=keys).start()
        try:
            url = f"{edge.url}/v2/library/demo/manifests/latest"
            answer = httpx.get(url, headers={"Accept": demo.media_type, "X-Request-Id": "pull-7f3a"})
            assert answer.headers["x-request-id"] == "pull-7f3a"
            made = httpx.get(url, headers={"Accept": demo.media_type}).headers["x-request-id"]
            assert made and made != "pull-7f3a", "made when the client sends none"
            odd = httpx.get(url, headers={"Accept": demo.media_type, "X-Request-Id": "bad id; with spaces"})
            assert odd.headers["x-request-id"] != "bad id; with spaces"
        finally:
            edge.stop()
            regional.stop()
        assert any(r.request_id == "pull-7f3a" and "/manifests/" in r.uri for r in upstream.requests())
    for mirror in (edge, regional):
        access = [line for line in mirror.log_path.read_text().splitlines() if "mirror.access" in line]
        assert any("/manifests/latest" in line and line.endswith(" pull-7f3a") for line in access), access


def test_listening_on_both_families(tmp_path: Path, registry: Registry, images: dict[str, Image]) -> None:
    """`listen = "[::]:PORT"` serves IPv6 (::1) and IPv4 (127.0.0.1) clients alike."""
    mirror = MirrorProcess(tmp_path / "m", {"docker.io": registry.url}, listen_host="[::]").start()
    try:
        demo = images["demo"]
        for host in ("[::1]", "127.0.0.1"):
            answer = httpx.get(
                f"http://{host}:{mirror.port}/v2/library/demo/manifests/latest", headers={"Accept": demo.media_type}
            )
            assert answer.status_code == 200 and answer.content == demo.manifest
        # Every blob of the image over IPv6 (skopeo 1.9's reference grammar has no IPv6 literals).
        for digest, data in demo.all_blobs().items():
            blob = httpx.get(f"http://[::1]:{mirror.port}/v2/library/demo/blobs/{digest}")
            assert blob.status_code == 200 and blob.content == data
        stats = subprocess.run(
            [sys.executable, "-m", "mirror", "stats", "--config", str(mirror.root / "config.toml")],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert stats.returncode == 0 and stats.stdout.split()[:2] == ["source", "server"], "commands reach it too"
    finally:
        mirror.stop()


def test_the_open_files_limit_is_raised_to_the_hard_limit(tmp_path: Path, registry: Registry) -> None:
    """A container runtime's soft limit (often 1024) would cap connections; the mirror takes the hard one."""
    mirror = MirrorProcess(tmp_path / "m", {"docker.io": registry.url}, wrapper=[tool("prlimit"), "--nofile=1024:8192"])
    try:
        mirror.start()
        assert mirror.process is not None
        limits = Path(f"/proc/{mirror.process.pid}/limits").read_text()
        line = next(line for line in limits.splitlines() if line.startswith("Max open files"))
        assert line.split()[3:5] == ["8192", "8192"], line
    finally:
        mirror.stop()
