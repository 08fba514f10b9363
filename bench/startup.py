"""Scenario 9: start-up with a large cache (issue 16): 1,000,000 blob files, page cache dropped.

The mirror must answer right within 3 s of its start, whatever the cache's size: a blob's file
is the blob, and the LRU index is built in the background. Only the mirror is measured; the
peers have no comparable start (distribution reads its storage on demand too).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench import procs
from bench.context import Context

GOAL_SECONDS = 3.0
BLOB_BYTES = 64


def fill(cache: Path, count: int) -> tuple[str, bytes]:
    """`count` small blob files with correct names in a prepared cache; the last one made."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from mirror.cache.format import prepare  # the format's owner makes the directory
    from mirror.cache.layout import CacheLayout
    from mirror.registry.reference import parse_digest

    layout = CacheLayout(cache)
    prepare(layout)
    made: tuple[str, bytes] = ("", b"")
    created: set[Path] = set()
    for n in range(count):
        data = n.to_bytes(8, "big") * (BLOB_BYTES // 8)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = layout.blob_path(parse_digest(digest))
        if path.parent not in created:
            path.parent.mkdir(parents=True, exist_ok=True)
            created.add(path.parent)
        with open(path, "wb") as out:
            out.write(data)
        made = (digest, data)
    return made


def drop_page_cache() -> str | None:
    """`echo 3 > /proc/sys/vm/drop_caches`; why not, when it cannot be done here."""
    subprocess.run(["sync"], check=False)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as exc:
        return f"page cache not dropped: {exc.strerror}"
    return None


def s9_startup(ctx: Context) -> dict[str, Any]:
    if "mirror" not in ctx.targets:
        return {}
    count = ctx.args.startup_blobs
    root = ctx.run_dir / "startup"
    cache = root / "data"
    ctx.log(f"  making {count:,} blob files")
    started = time.monotonic()
    digest, data = fill(cache, count)
    made_s = time.monotonic() - started
    port = procs.free_port()
    config = root / "config.toml"
    config.write_text(
        f'[server]\nlisten = "127.0.0.1:{port}"\nlog_level = "warning"\n'
        f'[cache]\ndirectory = "{cache}"\n[upstreams."docker.io"]\nurl = "{ctx.upstream.url}"\n'
    )
    note = drop_page_cache()
    if note:
        ctx.notes.append(f"scenario 9: {note}")
    started = time.monotonic()
    process = procs.spawn(
        [sys.executable, "-m", "mirror", "serve", "--config", str(config)],
        log=root / "mirror.log",
        env={"PYTHONUNBUFFERED": "1"},
        cwd=Path(__file__).resolve().parent.parent,
    )
    url = f"http://127.0.0.1:{port}"
    first_answer = index_ready = None
    try:
        deadline = started + ctx.args.scenario_timeout
        while first_answer is None and time.monotonic() < deadline:
            try:
                answer = httpx.get(f"{url}/v2/library/any/blobs/{digest}", timeout=5)
                if answer.status_code == 200 and answer.content == data:
                    first_answer = time.monotonic() - started
            except httpx.TransportError:
                time.sleep(0.01)
        while index_ready is None and time.monotonic() < deadline:
            if httpx.get(f"{url}/stats", timeout=5).json().get("blob_index_ready"):
                index_ready = time.monotonic() - started
            else:
                time.sleep(0.05)
        stats = httpx.get(f"{url}/stats", timeout=5).json()
    finally:
        procs.stop(process)
        shutil.rmtree(root, ignore_errors=True)
        os.sync()
    return {
        "mirror": {
            "ok": first_answer is not None and stats.get("cached_blobs") == count,
            "blobs": count,
            "made_s": made_s,
            "page_cache_dropped": note is None,
            "first_answer_s": first_answer,
            "index_ready_s": index_ready,
            "indexed_blobs": stats.get("cached_blobs"),
            "goal_s": GOAL_SECONDS,
        }
    }
