"""Pins: `mirror pin`, `[[pin]]` and `mirror import` keep images through an eviction storm; others go."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
from support import ALL_MANIFESTS, Image, MirrorProcess, Pusher, Registry
from test_pull import skopeo_copy, verify_dir_copy

LAYER = 256 * 1024


def command(mirror: MirrorProcess, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "mirror", *args, "--config", str(mirror.root / "config.toml")]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def test_pinned_and_imported_images_survive_an_eviction_storm(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry").start()
    try:
        with Pusher(registry.url) as pusher:
            images = [pusher.image(f"library/storm{n}", "1", [LAYER, 4096], seed=70 + n) for n in range(12)]
            kept_by_cli = pusher.image("library/keep", "1", [LAYER, 4096], seed=90)
            kept_by_config = pusher.image("library/config", "1", [LAYER, 4096], seed=91)
            imported = pusher.image("library/imported", "1", [LAYER, 4096], seed=92)
        # The imported image comes from an archive another mirror exported.
        source = MirrorProcess(tmp_path / "source", {"docker.io": registry.url}).start()
        try:
            skopeo_copy(source, "library/imported:1", tmp_path / "src-pull")
            source.wait_idle()
        finally:
            source.stop()
        archive = tmp_path / "imported.tar"
        exported = command(source, "export", "library/imported:1", "-o", str(archive))
        assert exported.returncode == 0, exported.stderr

        budget = 6 * LAYER  # far less than the 15 images
        mirror = MirrorProcess(
            tmp_path / "m",
            {"docker.io": registry.url},
            extra_config=f'max_size = {budget}\n[[pin]]\nimage = "library/config:1"\n',
        )
        mirror.start()
        try:
            for image in (kept_by_cli, kept_by_config):
                skopeo_copy(mirror, f"{image.repository}:1", tmp_path / f"first-{image.repository.split('/')[1]}")
                mirror.wait_idle()
            pinned = command(mirror, "pin", "library/keep:1")
            assert pinned.returncode == 0 and "pinned docker.io/library/keep:1" in pinned.stdout, pinned.stderr
            result = command(mirror, "import", str(archive))
            assert result.returncode == 0 and "pinned 1 image" in result.stderr, result.stderr
            # Config pins are resolved at start-up, once cached: a restart picks the config one up.
            mirror.stop()
            mirror.start()
            for n, image in enumerate(images):  # the storm: 12 images through a 6-layer budget
                skopeo_copy(mirror, f"{image.repository}:1", tmp_path / f"storm-{n}")
                mirror.wait_idle()
            stats = mirror.stats()
            assert stats["evictions"] > 0 and stats["cached_bytes"] <= budget + 3 * LAYER
            for image in (kept_by_cli, kept_by_config, imported):
                for digest in image.all_blobs():
                    assert mirror.blob_path(digest).exists(), f"{image.repository} lost {digest}"
            assert not all(mirror.blob_path(d).exists() for d in images[0].blobs), "unpinned ones went"
            mark = registry.mark()
            for image in (kept_by_cli, kept_by_config, imported):
                out = tmp_path / f"again-{image.repository.split('/')[1]}"
                skopeo_copy(mirror, f"{image.repository}:1", out)
                verify_dir_copy(out, image)
            fetched = [p for m, p, _ in registry.requests_since(mark) if m == "GET" and "/blobs/" in p]
            assert fetched == [], "pinned images come from the cache"
            listed = command(mirror, "ls")
            pinned_rows = [line.split()[0] for line in listed.stdout.splitlines() if " yes " in line]
            assert sorted(pinned_rows) == [
                "docker.io/library/config",
                "docker.io/library/imported",
                "docker.io/library/keep",
            ]
            rows = httpx.get(f"{mirror.url}/api/images").json()
            assert {r["repository"] for r in rows if r["pinned"]} == {
                "library/keep",
                "library/config",
                "library/imported",
            }
            # Beyond the budget: refused, saying so.
            too_many = command(mirror, "pin", *[f"{image.repository}:1" for image in images[-4:]])
            assert too_many.returncode == 1 and "max_size" in too_many.stderr, too_many.stderr
            unpinned = command(mirror, "unpin", "library/keep:1")
            assert "unpinned docker.io/library/keep:1" in unpinned.stdout
        finally:
            mirror.stop()
    finally:
        registry.stop()


def test_pinning_what_is_not_cached_without_fetch_says_so(mirror: MirrorProcess, images: dict[str, Image]) -> None:
    """`POST /api/pin` without `fetch` (what `mirror import` sends) pins only what is cached."""
    answer = httpx.post(f"{mirror.url}/api/pin", json={"targets": ["library/demo:latest"]})
    assert answer.status_code == 409 and "is not cached: pull it" in answer.json()["errors"][0]["message"]
    httpx.get(f"{mirror.url}/v2/library/demo/manifests/latest", headers={"Accept": ", ".join(ALL_MANIFESTS)})
    answer = httpx.post(f"{mirror.url}/api/pin", json={"targets": ["library/demo:latest"]})
    assert answer.json() == {"pinned": ["docker.io/library/demo:latest"]}
