"""A bounded cache: LRU eviction as content arrives, without ever breaking a pull."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
import anyio.lowlevel
import httpx
from support import Image, MirrorProcess, Pusher, Registry, sha256
from test_pull import skopeo_copy, verify_dir_copy

from mirror.cache.blobs import BlobStore
from mirror.cache.format import prepare
from mirror.cache.layout import CacheLayout
from mirror.registry.reference import Digest, parse_digest

MIB = 1024 * 1024


def cached_bytes_on_disk(mirror: MirrorProcess) -> int:
    return sum(f.stat().st_size for f in (mirror.cache_dir / "blobs").rglob("*") if f.is_file())


def test_small_budget_filled_many_times_over(registry: Registry, tmp_path: Path) -> None:
    with Pusher(registry.url) as pusher:
        images = [pusher.image(f"library/evict{i}", "latest", [MIB, MIB // 2], seed=200 + i) for i in range(8)]
    image_bytes = sum(len(b) for image in images for b in image.blobs.values())
    budget = 4 * MIB
    process = MirrorProcess(tmp_path / "m", {"docker.io": registry.url}, extra_config=f"max_size = {budget}").start()
    peak = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, process.stats()["cached_bytes"])
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:

        def pull(job: tuple[int, Image]) -> None:
            n, image = job
            out = tmp_path / f"pull{n}"
            skopeo_copy(process, f"{image.repository}:latest", out)
            verify_dir_copy(out, image)

        with ThreadPoolExecutor(3) as pool:
            list(pool.map(pull, enumerate(images * 3)))
        process.wait_idle()
        stats = process.stats()
    finally:
        stop.set()
        watcher.join()
        process.stop()
    assert image_bytes > 2 * budget, "the test must overfill the budget"
    assert stats["evictions"] > 0
    assert stats["evicted_bytes"] >= image_bytes - budget
    assert stats["cached_bytes"] <= budget
    assert peak <= budget + 2 * MIB, "only blobs being committed may briefly exceed the budget"
    assert cached_bytes_on_disk(process) == stats["cached_bytes"]
    print(
        f"eviction: {len(images) * 3} pulls of {image_bytes} bytes in all through a {budget}-byte cache, "
        f"{stats['evictions']} evictions, {stats['evicted_bytes']} bytes evicted, peak {peak} bytes"
    )


def test_least_recently_used_goes_first(registry: Registry, tmp_path: Path) -> None:
    blobs = {}
    with Pusher(registry.url) as pusher:
        for name in "abc":
            data = name.encode() * MIB
            blobs[name] = (pusher.blob("library/lru", data), data)
    process = MirrorProcess(tmp_path / "m", {"docker.io": registry.url}, extra_config=f"max_size = {2 * MIB + 1024}")
    process.start()
    try:

        def get(name: str) -> str:
            digest, data = blobs[name]
            response = httpx.get(f"{process.url}/v2/library/lru/blobs/{digest}")
            assert response.content == data
            process.wait_idle()
            return str(response.headers["x-cache"])

        assert get("a") == "MISS"
        assert get("b") == "MISS"
        assert get("a") == "HIT"  # a is now the most recently used
        assert get("c") == "MISS"  # evicts b
        assert get("a") == "HIT"
        assert get("b") == "MISS"
    finally:
        process.stop()


def test_blob_larger_than_the_cache_is_served_uncached(registry: Registry, tmp_path: Path) -> None:
    data = b"x" * (3 * MIB)
    with Pusher(registry.url) as pusher:
        digest = pusher.blob("library/huge", data)
    process = MirrorProcess(tmp_path / "m", {"docker.io": registry.url}, extra_config=f"max_size = {2 * MIB}").start()
    try:
        for _ in range(2):
            assert httpx.get(f"{process.url}/v2/library/huge/blobs/{digest}").content == data
            process.wait_idle()
        stats = process.stats()
        assert stats["uncached_downloads"] == 2
        assert stats["cached_blobs"] == 0
        assert list((process.cache_dir / "tmp").iterdir()) == []
    finally:
        process.stop()


def test_restart_rebuilds_the_index_and_enforces_a_smaller_budget(registry: Registry, tmp_path: Path) -> None:
    with Pusher(registry.url) as pusher:
        digests = [pusher.blob("library/restart", bytes([i]) * MIB) for i in range(4)]
    process = MirrorProcess(tmp_path / "m", {"docker.io": registry.url}).start()
    try:
        for digest in digests:
            httpx.get(f"{process.url}/v2/library/restart/blobs/{digest}")
        process.wait_idle()
    finally:
        process.stop()
    process.extra_config = f"max_size = {2 * MIB}"
    process.start()
    try:
        stats = process.wait_indexed()  # serving at once; the budget is enforced once the scan is done
        assert stats["cached_blobs"] == 2
        assert stats["cached_bytes"] == 2 * MIB
        assert cached_bytes_on_disk(process) == 2 * MIB
    finally:
        process.stop()


def test_max_age_expires_unused_content(registry: Registry, tmp_path: Path) -> None:
    with Pusher(registry.url) as pusher:
        digest = pusher.blob("library/aging", b"old content" * 1000)
    process = MirrorProcess(tmp_path / "m", {"docker.io": registry.url}, extra_config='max_age = "2s"').start()
    try:
        httpx.get(f"{process.url}/v2/library/aging/blobs/{digest}")
        process.wait_idle()
        assert process.blob_path(digest).exists()
        deadline = time.monotonic() + 15
        while process.blob_path(digest).exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not process.blob_path(digest).exists()
        assert process.stats()["evictions"] == 1
        assert httpx.get(f"{process.url}/v2/library/aging/blobs/{digest}").headers["x-cache"] == "MISS"
    finally:
        process.stop()


def test_config_rejects_bad_sizes(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[cache]\nmax_size = "lots"\n')
    result = subprocess.run(
        [sys.executable, "-m", "mirror", "serve", "--config", str(bad)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "cache.max_size" in result.stderr


def test_eviction_keeps_the_inventory(registry: Registry, tmp_path: Path) -> None:
    """Under a max_size smaller than what was pulled, `mirror ls` still lists every tag with its platforms."""
    with Pusher(registry.url) as pusher:
        single = pusher.image("library/inv-single", "1.0", [MIB, MIB // 2], seed=300)
        amd64 = pusher.image("library/inv-multi", "amd64", [MIB], seed=301)
        arm64 = pusher.image("library/inv-multi", "arm64", [MIB], seed=302, platform=("linux", "arm64"))
        pusher.index("library/inv-multi", "1.0", [amd64, arm64], oci=True)
        oci = pusher.image("library/inv-oci", "1.0", [MIB + MIB // 2], seed=303, oci=True)
    process = MirrorProcess(tmp_path / "m", {"docker.io": registry.url}, extra_config=f"max_size = {2 * MIB}").start()
    try:
        for n, reference in enumerate(["library/inv-single:1.0", "library/inv-multi:1.0", "library/inv-oci:1.0"]):
            skopeo_copy(process, reference, tmp_path / f"pull{n}")
        process.wait_idle()
        assert process.stats()["evictions"] > 0, "the test must overfill the budget"
        listed = subprocess.run(
            [sys.executable, "-m", "mirror", "ls", "--json", "--config", str(process.root / "config.toml")],
            capture_output=True,
            text=True,
            check=True,
        )
        table = subprocess.run(
            [sys.executable, "-m", "mirror", "ls", "--config", str(process.root / "config.toml")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        api = httpx.get(f"{process.url}/api/images").json()
    finally:
        process.stop()
    rows = {row["repository"]: row for row in json.loads(listed.stdout)}
    assert set(rows) == {"library/inv-single", "library/inv-multi", "library/inv-oci"}
    assert rows["library/inv-single"]["platforms"] == ["linux/amd64"], "the config blob was kept"
    assert rows["library/inv-multi"]["platforms"] == ["linux/amd64", "linux/arm64"], "from the index"
    assert rows["library/inv-oci"]["platforms"] == ["linux/amd64"]
    single_size = sum(len(b) for b in single.blobs.values())
    assert rows["library/inv-single"]["size"] == single_size
    assert rows["library/inv-single"]["cached_size"] < single_size, "its layers made room for later pulls"
    assert not rows["library/inv-single"]["complete"]
    assert rows["library/inv-oci"]["complete"], "the last pull is all there"
    assert rows["library/inv-oci"]["size"] == sum(len(b) for b in oci.blobs.values())
    assert "(partial)" in table and " - " not in table.replace("  ", " ")
    assert [row["tag"] for row in api] == ["1.0", "1.0", "1.0"], "/api/images asks the running cache"


def test_tags_nobody_pulls_for_tag_max_age_go(registry: Registry, images: dict[str, Image], tmp_path: Path) -> None:
    process = MirrorProcess(
        tmp_path / "m", {"docker.io": registry.url}, extra_config='tag_ttl = "1s"\ntag_max_age = "2s"'
    ).start()
    config = str(process.root / "config.toml")

    def listed() -> list[str]:
        result = subprocess.run(
            [sys.executable, "-m", "mirror", "ls", "--json", "--config", config], capture_output=True, text=True
        )
        return [row["repository"] for row in json.loads(result.stdout)]

    try:
        skopeo_copy(process, "library/demo:latest", tmp_path / "out")
        assert listed() == ["library/demo"]
        deadline = time.monotonic() + 15
        while listed():
            assert time.monotonic() < deadline, "the tag should have gone after tag_max_age"
            time.sleep(0.5)
        # Gone from the inventory, not from the registry API: the next pull fetches the tag again.
        skopeo_copy(process, "library/demo:latest", tmp_path / "again")
        assert listed() == ["library/demo"]
    finally:
        process.stop()


def test_layers_go_before_the_inventory_and_max_size_holds_even_for_it(tmp_path: Path) -> None:
    """The inventory is kept while layers can make room; if it alone outgrows max_size, its oldest go."""

    async def scenario() -> None:
        layout = CacheLayout(tmp_path / "cache")
        prepare(layout)
        store = BlobStore(layout, max_size=1000)
        store.open_sync()

        async def put(data: bytes, *, inventory: bool) -> Digest:
            digest = parse_digest(sha256(data))
            if inventory:
                store.add_inventory(digest)
            await store.put(digest, data)
            return digest

        first = await put(b"m" * 300, inventory=True)
        layer = await put(b"l" * 300, inventory=False)
        second = await put(b"n" * 300, inventory=True)
        third = await put(b"o" * 300, inventory=True)  # 1200 bytes: the layer goes, though it is newer
        assert [store.size_now(d) is not None for d in (first, layer, second, third)] == [True, False, True, True]
        fourth = await put(b"p" * 300, inventory=True)  # the inventory alone: its oldest goes
        assert store.size_now(first) is None and store.size_now(fourth) is not None
        assert store.total_bytes <= 1000

    anyio.run(scenario)


def test_a_blob_in_place_is_counted_once_and_is_not_the_next_victim(tmp_path: Path) -> None:
    """Its reservation is handed back as it joins the index: counted twice while its directory was
    synced, the next download's make_room evicted the newest blob (a pull found its layer gone)."""

    async def scenario() -> None:
        layout = CacheLayout(tmp_path / "cache")
        prepare(layout)
        store = BlobStore(layout, max_size=2000)
        store.open_sync()
        older = parse_digest(sha256(b"o" * 300))
        await store.put(older, b"o" * 300)
        data = b"n" * 1500
        newest = parse_digest(sha256(data))
        reservation = await store.make_room(len(data))
        assert reservation is not None and store.eviction.reserved == 1500
        written = layout.partial_path(newest)
        written.parent.mkdir(parents=True, exist_ok=True)
        written.write_bytes(data)
        fd = os.open(written, os.O_RDWR)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(store.place, newest, fd, written, len(data), reservation)
            while store.size_now(newest) is None:
                await anyio.lowlevel.checkpoint()
            # Renamed into place; the directory's fsync is still under way.
            assert (reservation.size, store.eviction.reserved, store.total_bytes) == (0, 0, 1800)
            assert await store.make_room(400) is not None
        assert store.size_now(newest) is not None, "the newest blob stays"
        assert store.size_now(older) is None, "the least recently used made room"

    anyio.run(scenario)
