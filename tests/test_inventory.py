"""`mirror ls` and /api/images list what the cache holds, with platforms."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
from support import ALL_MANIFESTS, Image, MirrorProcess


def test_ls_and_api_list_tags_digests_sizes_and_platforms(mirror: MirrorProcess, images: dict[str, Image]) -> None:
    accept = [("Accept", a) for a in ALL_MANIFESTS]
    for repository in ("library/demo", "library/multi"):
        httpx.get(f"{mirror.url}/v2/{repository}/manifests/latest", headers=accept)
    amd64 = images["list"].children[0]
    httpx.get(f"{mirror.url}/v2/library/multi/manifests/{amd64.digest}", headers=accept)
    demo = images["demo"]
    config_digest = json.loads(demo.manifest)["config"]["digest"]
    httpx.get(f"{mirror.url}/v2/library/demo/blobs/{config_digest}")
    mirror.wait_idle()

    rows = httpx.get(f"{mirror.url}/api/images").json()
    by_repo = {row["repository"]: row for row in rows}
    assert by_repo["library/demo"]["digest"] == demo.digest
    assert by_repo["library/demo"]["platforms"] == ["linux/amd64"]
    assert by_repo["library/demo"]["size"] == sum(len(b) for b in demo.blobs.values())
    assert sorted(by_repo["library/multi"]["platforms"]) == ["linux/amd64", "linux/arm64"]
    assert by_repo["library/multi"]["media_type"] == images["list"].media_type
    # An index's size: its cached children's images (here only amd64's).
    assert by_repo["library/multi"]["size"] == sum(len(b) for b in amd64.blobs.values())

    only = httpx.get(f"{mirror.url}/api/images/library$multi").json()
    assert [row["repository"] for row in only] == ["library/multi"]

    result = subprocess.run(
        [sys.executable, "-m", "mirror", "ls", "--config", str(mirror.root / "config.toml")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["REPOSITORY", "TAG", "DIGEST", "SIZE", "LAST", "PULL", "PINNED", "PLATFORMS"]
    assert any("docker.io/library/multi" in line and "linux/amd64,linux/arm64" in line for line in lines)
