"""Pins fetch what they pin: `mirror pin` and `[[pin]]` bring in an image that is not cached (through
the running server, as a client's pull), then keep it; `mirror ls` says so while it arrives."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from pacing import PacedUpstream
from support import ALL_MANIFESTS, Image, MirrorProcess, Pusher, Registry
from test_pins import command
from test_pull import skopeo_copy
from test_reload import hangup

LAYER = 256 * 1024


def wait_until(condition: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not in time: {what}"
        time.sleep(0.05)


def cached(mirror: MirrorProcess, image: Image) -> bool:
    return all(mirror.blob_path(digest).exists() for digest in image.all_blobs())


def listed(mirror: MirrorProcess) -> list[dict[str, Any]]:
    result = command(mirror, "ls", "--json")
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows


def blob_gets_since(registry: Registry, mark: int) -> list[str]:
    return [
        path.rsplit("/", 1)[1]
        for method, path, _ in registry.requests_since(mark)
        if method == "GET" and "/blobs/" in path
    ]


def test_pin_fetches_an_uncached_image_and_keeps_it_through_an_eviction_storm(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry").start()
    try:
        with Pusher(registry.url) as pusher:
            kept = pusher.image("library/keep", "1", [LAYER, LAYER // 2, 4096], seed=120)
            storm = [pusher.image(f"library/storm{n}", "1", [LAYER, 4096], seed=130 + n) for n in range(10)]
        budget = 5 * LAYER  # far less than the storm
        mirror = MirrorProcess(tmp_path / "m", {"docker.io": registry.url}, extra_config=f"max_size = {budget}\n")
        mirror.start()
        try:
            mark = registry.mark()
            pinned = command(mirror, "pin", "library/keep:1")
            assert pinned.returncode == 0, pinned.stderr
            assert pinned.stdout == "pinned docker.io/library/keep:1\n"
            assert cached(mirror, kept), "every blob is cached when `mirror pin` returns"
            gets = blob_gets_since(registry, mark)
            assert sorted(gets) == sorted(kept.blobs), "the upstream is asked once per blob"
            assert [r["pin_state"] for r in listed(mirror)] == ["pinned"]

            for n, image in enumerate(storm):  # the storm: 10 images through a 5-layer budget
                skopeo_copy(mirror, f"{image.repository}:1", tmp_path / f"storm-{n}")
                mirror.wait_idle()
            assert mirror.stats()["evictions"] > 0
            assert cached(mirror, kept), "the pinned image stays"
            assert not cached(mirror, storm[0]), "unpinned ones went"
            mark = registry.mark()
            skopeo_copy(mirror, "library/keep:1", tmp_path / "again")
            assert blob_gets_since(registry, mark) == [], "the pinned image comes from the cache"
            # Pinned again: nothing to fetch.
            assert command(mirror, "pin", "library/keep:1").returncode == 0
            assert blob_gets_since(registry, mark) == []
        finally:
            mirror.stop()
    finally:
        registry.stop()


def test_pin_with_a_platform_fetches_that_child_of_an_index_only(
    mirror: MirrorProcess, registry: Registry, images: dict[str, Image]
) -> None:
    amd64, arm64 = images["list"].children
    mark = registry.mark()
    result = command(mirror, "pin", "library/multi:latest", "--platform", "linux/arm64")
    assert result.returncode == 0 and "pinned docker.io/library/multi:latest" in result.stdout, result.stderr
    assert cached(mirror, arm64)
    assert not any(mirror.blob_path(digest).exists() for digest in amd64.blobs)
    asked = [path for method, path, _ in registry.requests_since(mark) if method == "GET"]
    assert not any(amd64.digest in path or any(d in path for d in amd64.blobs) for path in asked), asked
    assert sorted(blob_gets_since(registry, mark)) == sorted(arm64.blobs)
    rows = [r for r in listed(mirror) if r["repository"] == "library/multi"]
    assert [(r["tag"], r["pin_state"], r["platforms"]) for r in rows] == [
        ("latest", "pinned", ["linux/amd64", "linux/arm64"])
    ]
    # The pin records what it fetched: the index, the arm64 child and its blobs.
    out = command(mirror, "rm", "library/multi:latest")
    assert out.returncode == 1 and "pinned" in out.stderr, out.stderr


def test_pin_of_what_does_not_exist_fails_and_pins_nothing(
    mirror: MirrorProcess, registry: Registry, images: dict[str, Image]
) -> None:
    missing = command(mirror, "pin", "library/demo:latest", "library/nothing:1")
    assert missing.returncode == 1, missing.stderr
    assert "library/nothing:1" in missing.stderr and "manifest unknown" in missing.stderr.lower(), missing.stderr
    no_platform = command(mirror, "pin", "library/multi:latest", "--platform", "linux/s390x")
    assert no_platform.returncode == 1
    assert "no platform linux/s390x (it has linux/amd64, linux/arm64)" in no_platform.stderr, no_platform.stderr
    assert not any(r["pinned"] for r in listed(mirror)), "nothing pinned, not even the image that exists"
    assert not cached(mirror, images["demo"]), "refused before anything is fetched"
    bad = command(mirror, "pin", "library/demo:latest", "--platform", "amd64")
    assert bad.returncode == 2 and "linux/arm64" in bad.stderr
    # Without a server, only what is cached can be pinned: the error names the image and the server.
    mirror.stop()
    offline = command(mirror, "pin", "library/ocidemo:latest")
    assert offline.returncode == 1
    expected = f"library/ocidemo:latest is not cached, and no server answers at 127.0.0.1:{mirror.port}"
    assert expected in offline.stderr, offline.stderr


def test_a_pin_the_signature_policy_refuses_fails_with_its_reason(
    tmp_path: Path, registry: Registry, images: dict[str, Image]
) -> None:
    policy = {
        "default": [{"type": "insecureAcceptAnything"}],
        "transports": {"docker": {"docker.io/library/ocidemo": [{"type": "reject"}]}},
    }
    (tmp_path / "policy.json").write_text(json.dumps(policy))
    extra = f'[signatures]\npolicy = "{tmp_path / "policy.json"}"\n'
    mirror = MirrorProcess(tmp_path / "m", {"docker.io": registry.url}, extra_config=extra).start()
    try:
        refused = command(mirror, "pin", "library/ocidemo:latest")
        assert refused.returncode == 1 and "library/ocidemo:latest" in refused.stderr, refused.stderr
        accept = {"Accept": ", ".join(ALL_MANIFESTS)}
        client = httpx.get(f"{mirror.url}/v2/library/ocidemo/manifests/latest", headers=accept)
        assert client.status_code == 403, client.text
        reason = client.json()["errors"][0]["message"]
        assert reason in refused.stderr, (reason, refused.stderr)
        assert not any(r["pinned"] for r in listed(mirror))
        assert not any(mirror.blob_path(d).exists() for d in images["oci"].blobs)
    finally:
        mirror.stop()


def test_config_pins_are_fetched_at_start_up_and_on_reload_and_kept(
    tmp_path: Path, registry: Registry, images: dict[str, Image]
) -> None:
    demo, (amd64, arm64) = images["demo"], images["index"].children
    with Pusher(registry.url) as pusher:
        storm = [pusher.image(f"library/configstorm{n}", "1", [LAYER, 4096], seed=160 + n) for n in range(6)]
    budget = 5 * LAYER  # the two pinned images take about 2.5 layers; the storm 6 more
    demo_pin = '[[pin]]\nimage = "library/demo:latest"\n'
    mark = registry.mark()
    mirror = MirrorProcess(tmp_path / "m", {"docker.io": registry.url}, extra_config=f"max_size = {budget}\n{demo_pin}")
    mirror.start()
    try:
        wait_until(lambda: cached(mirror, demo), "[[pin]] brings the image in at start-up")
        wait_until(lambda: "[[pin]] library/demo:latest: kept" in mirror.log_path.read_text(), "the log says so")
        assert sorted(blob_gets_since(registry, mark)) == sorted(demo.blobs), "once per blob"
        assert [(r["repository"], r["pin_state"]) for r in listed(mirror)] == [("library/demo", "pinned")]

        mirror.extra_config += '[[pin]]\nimage = "library/ociindex:latest"\nplatforms = ["linux/arm64"]\n'
        mirror.write_config()
        hangup(mirror, "SIGHUP: config reloaded")
        wait_until(lambda: cached(mirror, arm64), "a [[pin]] added brings its image in on reload")
        wait_until(lambda: "[[pin]] library/ociindex:latest: kept" in mirror.log_path.read_text(), "kept")
        assert not any(mirror.blob_path(d).exists() for d in amd64.blobs), "its other platform is not fetched"
        rows = {r["repository"]: r["pin_state"] for r in listed(mirror)}
        assert rows == {"library/demo": "pinned", "library/ociindex": "pinned"}
        assert sorted(blob_gets_since(registry, mark)) == sorted([*demo.blobs, *arm64.blobs])

        for n, image in enumerate(storm):
            skopeo_copy(mirror, f"{image.repository}:1", tmp_path / f"storm-{n}")
            mirror.wait_idle()
        assert mirror.stats()["evictions"] > 0
        assert cached(mirror, demo) and cached(mirror, arm64), "both [[pin]] images stay"

        # A [[pin]] taken out of the config lets its image go.
        mirror.extra_config = mirror.extra_config.replace(demo_pin, "")
        mirror.write_config()
        hangup(mirror, "SIGHUP: config reloaded")
        wait_until(
            lambda: (
                {r["repository"]: r["pin_state"] for r in httpx.get(f"{mirror.url}/api/images").json()}.get(
                    "library/demo"
                )
                is None
            ),
            "demo is no longer pinned",
        )
    finally:
        mirror.stop()


def test_ls_shows_a_pin_still_being_fetched(tmp_path: Path, registry: Registry) -> None:
    with Pusher(registry.url) as pusher:
        slow = pusher.image("library/slowpin", "1", [1024 * 1024, 4096], seed=150)
    with PacedUpstream(registry, tmp_path / "paced", rate="256k") as paced:
        mirror = MirrorProcess(tmp_path / "m", {"docker.io": paced.url}).start()
        try:
            argv = [
                sys.executable,
                "-m",
                "mirror",
                "pin",
                "library/slowpin:1",
                "--config",
                str(mirror.root / "config.toml"),
            ]
            pin = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                wait_until(lambda: any(r["pin_state"] == "fetching" for r in listed(mirror)), "ls says fetching")
                table = command(mirror, "ls").stdout
                assert any(" fetching " in line for line in table.splitlines() if "library/slowpin" in line), table
                rows = httpx.get(f"{mirror.url}/api/images").json()
                assert [(r["repository"], r["pin_state"], r["pinned"]) for r in rows] == [
                    ("library/slowpin", "fetching", True)
                ]
                out, err = pin.communicate(timeout=60)
            finally:
                pin.kill()
            assert pin.returncode == 0 and "pinned docker.io/library/slowpin:1" in out, err
            assert cached(mirror, slow)
            assert [r["pin_state"] for r in listed(mirror)] == ["pinned"]
            assert [r["pin_state"] for r in httpx.get(f"{mirror.url}/api/images").json()] == ["pinned"]
        finally:
            mirror.stop()


MARK_AND_EXIT = """
import sys
from pathlib import Path
from mirror.cache.directory import CacheDirectory
from mirror.cache.pins import mark_fetching
from mirror.cache.removal import parse_target
cache = CacheDirectory.open(Path(sys.argv[1]))
mark_fetching(cache, parse_target("library/crashed:1.0"), {"sha256:" + "a" * 64: 10})
cache.close()
"""


def test_a_fetch_mark_left_by_a_server_that_died_is_not_fetching(tmp_path: Path) -> None:
    """A server killed mid-fetch leaves its mark in the index until the next start: `mirror ls`
    passes over a mark whose process is gone (or is another process with its PID)."""
    from mirror.cache.directory import CacheDirectory
    from mirror.cache.pins import fetching_digests, mark_fetching
    from mirror.cache.removal import parse_target

    root = tmp_path / "cache"
    CacheDirectory.open(root).close()
    subprocess.run([sys.executable, "-c", MARK_AND_EXIT, str(root)], check=True, timeout=60)
    cache = CacheDirectory.open(root)
    try:
        assert fetching_digests(cache) == frozenset(), "its writer has exited"
        live = "sha256:" + "b" * 64
        mark_fetching(cache, parse_target("library/live:1.0"), {live: 10})  # this process: alive
        assert fetching_digests(cache) == {live}
    finally:
        cache.close()
