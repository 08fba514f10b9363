"""The dashboard: its JSON after real pulls, and the page rendered by a real headless Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fake_upstream import FakeBlob, FakeUpstream
from support import ALL_MANIFESTS, Image, MirrorProcess, Pusher, Registry, free_port, sha256
from test_pull import skopeo_copy
from tools import tool

SCREENSHOT_COPY = Path("/tmp/mirror-dashboard.png")


def dashboard(mirror: MirrorProcess) -> dict[str, Any]:
    response = httpx.get(f"{mirror.url}/api/dashboard")
    assert response.status_code == 200
    data: dict[str, Any] = response.json()
    return data


def pull_some(mirror: MirrorProcess, tmp_path: Path) -> None:
    """Cold then warm pulls of two images, and one more warm pull of the first."""
    for run, reference in enumerate(["library/demo:latest", "library/multi:latest"] * 2 + ["library/demo:latest"]):
        skopeo_copy(mirror, reference, tmp_path / f"pull-{run}")
        mirror.wait_idle()


def test_api_dashboard_after_pulls(mirror: MirrorProcess, images: dict[str, Image], tmp_path: Path) -> None:
    pull_some(mirror, tmp_path)
    time.sleep(1.1)  # the interval under way is reported once it is a second long
    data = dashboard(mirror)

    assert set(data) >= {
        "now",
        "stats",
        "hits",
        "misses",
        "hit_ratio",
        "bytes_saved",
        "cache",
        "interval_seconds",
        "series",
        "inflight",
        "top_repositories",
        "upstreams",
    }
    stats = data["stats"]
    assert data["hits"] > 0 and data["misses"] > 0
    assert data["hit_ratio"] == pytest.approx(data["hits"] / (data["hits"] + data["misses"]))
    assert 0.5 < data["hit_ratio"] < 1  # three of five pulls were warm
    assert data["bytes_saved"] == stats["bytes_served_from_cache"] > 0
    assert data["cache"]["used_bytes"] == stats["cached_bytes"] > 0
    assert data["cache"]["max_bytes"] == 0 and data["cache"]["used_fraction"] is None
    assert data["cache"]["blobs"] == stats["cached_blobs"]
    assert data["inflight"] == []

    series = data["series"]
    assert series, "no samples"
    for sample in series:
        assert set(sample) == {"t", "seconds", "requests", "hits", "misses", "bytes_from_cache", "bytes_from_upstream"}
    # Every request since start-up lies in the series: the first sample is taken at start-up.
    assert sum(s["requests"] for s in series) == stats["requests"]
    assert sum(s["bytes_from_cache"] for s in series) == stats["bytes_served_from_cache"]
    assert sum(s["bytes_from_upstream"] for s in series) == stats["bytes_fetched_from_upstream"]

    top = {(row["upstream"], row["repository"]): row["requests"] for row in data["top_repositories"]}
    assert set(top) == {("docker.io", "library/demo"), ("docker.io", "library/multi")}
    assert 0 < sum(top.values()) <= stats["requests"]  # `GET /v2/` names no repository
    assert data["top_repositories"][0]["requests"] >= data["top_repositories"][1]["requests"]

    [upstream] = data["upstreams"]
    assert upstream["name"] == "docker.io" and upstream["status"] == "ok"
    assert upstream["last_success"] is not None and upstream["consecutive_failures"] == 0
    assert upstream["last_error_message"] is None


def test_page_and_static_files_are_served_from_the_package(mirror: MirrorProcess) -> None:
    page = httpx.get(f"{mirror.url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert '<script src="/static/dashboard.js"' in page.text
    for name, media_type in [("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")]:
        response = httpx.get(f"{mirror.url}/static/{name}")
        assert response.status_code == 200 and response.headers["content-type"].startswith(media_type)
        assert "http://" not in response.text.replace("http://www.w3.org/2000/svg", "")  # nothing external
    assert "innerHTML" not in httpx.get(f"{mirror.url}/static/dashboard.js").text
    for path in ["/static/nope.js", "/static/..%2fapp.py", "/static/dashboard.html/x"]:
        assert httpx.get(f"{mirror.url}{path}").status_code == 404


def test_inflight_download_shows_progress(
    fake_upstream: FakeUpstream, fake_mirror: MirrorProcess, tmp_path: Path
) -> None:
    blob = FakeBlob(b"x" * 65536, repeat=32, gate_at=65536 * 8)
    digest = fake_upstream.add_blob(blob)
    done = threading.Event()

    def pull() -> None:
        try:
            httpx.get(f"{fake_mirror.url}/v2/library/big/blobs/{digest}", timeout=30)
        finally:
            done.set()

    thread = threading.Thread(target=pull)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while True:
            inflight = dashboard(fake_mirror)["inflight"]
            if inflight and inflight[0]["received"] >= blob.gate_at:
                break
            assert time.monotonic() < deadline, inflight
            time.sleep(0.05)
        assert inflight == [{"digest": digest, "size": blob.size, "received": inflight[0]["received"]}]
        assert inflight[0]["received"] < blob.size
    finally:
        blob.gate.set()
        thread.join(30)
    assert done.is_set()
    fake_mirror.wait_idle()
    assert dashboard(fake_mirror)["inflight"] == []


def test_upstream_health_reports_failures(tmp_path: Path) -> None:
    dead = MirrorProcess(tmp_path / "dead", {"docker.io": f"http://127.0.0.1:{free_port()}"}).start()
    try:
        accept = [("Accept", a) for a in ALL_MANIFESTS]
        assert httpx.get(f"{dead.url}/v2/library/demo/manifests/latest", headers=accept).status_code == 503
        [upstream] = dashboard(dead)["upstreams"]
        assert upstream["status"] == "degraded"
        assert upstream["consecutive_failures"] == 1 and upstream["last_success"] is None
        assert upstream["last_error"] is not None
        assert "refused the connection: nothing listens there" in upstream["last_error_message"], "cause and fix"
        for _ in range(2):
            httpx.get(f"{dead.url}/v2/library/demo/manifests/latest", headers=accept)
        assert dashboard(dead)["upstreams"][0]["status"] == "down"
    finally:
        dead.stop()


def chromium(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    binary = tool("chromium")
    profile = tmp_path / "chromium-profile"
    profile.mkdir(exist_ok=True)
    command = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--window-size=1280,1000",
        "--virtual-time-budget=5000",
        *args,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture
def bounded_mirror(tmp_path: Path, registry: Registry, images: dict[str, Image]) -> Iterator[MirrorProcess]:
    """A mirror with a max_size, so that the page shows cache use against it."""
    process = MirrorProcess(tmp_path / "bounded", {"docker.io": registry.url}, extra_config='max_size = "4MiB"')
    process.start()
    try:
        yield process
    finally:
        process.stop()


SBOM_TYPE = "application/vnd.example.sbom.v1"


def push_artifact(registry: Registry) -> str:
    """An artifact as ORAS pushes one: artifactType, the empty config, one layer. Returns its digest."""
    empty = b"{}"
    layer = b'{"sbom": "example"}'
    with Pusher(registry.url) as pusher:
        pusher.blob("library/sbom", empty)
        pusher.blob("library/sbom", layer)
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": SBOM_TYPE,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256(empty), "size": 2},
            "layers": [{"mediaType": "application/json", "digest": sha256(layer), "size": len(layer)}],
        }
        body = json.dumps(manifest).encode()
        pusher.manifest("library/sbom", "v1", body, manifest["mediaType"])  # type: ignore[arg-type]
    return sha256(body)


def test_dashboard_renders_in_headless_chromium(
    bounded_mirror: MirrorProcess, registry: Registry, tmp_path: Path
) -> None:
    mirror = bounded_mirror
    pull_some(mirror, tmp_path)
    push_artifact(registry)
    skopeo_copy(mirror, "library/sbom:v1", tmp_path / "pull-sbom")
    pinned = httpx.post(f"{mirror.url}/api/pin", json={"targets": ["library/demo:latest"]})
    assert pinned.json() == {"pinned": ["docker.io/library/demo:latest"]}
    time.sleep(1.1)
    data = dashboard(mirror)
    assert data["cache"]["max_bytes"] == 4 * 1024 * 1024
    expected_ratio = f"{data['hit_ratio'] * 100:.1f}%"
    expected_use = f"{data['cache']['used_fraction'] * 100:.1f}%"

    screenshot = tmp_path / "dashboard.png"
    chromium(f"--screenshot={screenshot}", f"{mirror.url}/", tmp_path=tmp_path)
    assert screenshot.exists()
    png = screenshot.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(png) > 20_000  # a blank page is a few kB
    shutil.copyfile(screenshot, SCREENSHOT_COPY)
    print(f"dashboard screenshot: {screenshot} (copied to {SCREENSHOT_COPY})")

    dom = chromium("--dump-dom", f"{mirror.url}/", tmp_path=tmp_path).stdout
    # Only the page's script puts these there: it fetched /api/dashboard and rendered it.
    assert f'<div id="hit-ratio" class="big">{expected_ratio}</div>' in dom
    assert '<span class="repo-repository">library/demo</span>' in dom
    assert '<span class="repo-repository">library/multi</span>' in dom
    assert f'<div id="cache-use" class="big">{expected_use}</div>' in dom
    assert 'class="pill pill-ok">ok</span>' in dom
    assert "<svg" in dom and "<path" in dom  # the charts were drawn
    # The images view, from /api/images: platforms for an image, artifactType for an artifact.
    images = dom[dom.index('<table id="images"') :]
    assert '<span class="image-repository">library/multi</span><span class="image-tag">:latest</span>' in images
    assert '<td class="image-platforms">linux/amd64, linux/arm64</td>' in images
    assert f'<td class="artifact-type">{SBOM_TYPE}</td>' in images
    demo_row = images[images.index('<span class="image-repository">library/demo</span>') :].split("</tr>")[0]
    assert '<td class="flag pinned">pinned</td>' in demo_row
    assert '<td class="num muted">–</td>' in demo_row and ">Moved</th>" in images  # the tag never moved
