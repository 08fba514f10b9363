"""The cache's on-disk format: versioned, upgraded from what older versions wrote, never misread.

`fixtures/cache-format-1.tar.gz` is a cache directory written by a real mirror at 0223d2e
(format 1: no FORMAT file, pickled metadata); `fixtures/make_format1_cache.py` made it.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import tarfile
from pathlib import Path

import httpx
from support import ALL_MANIFESTS, MirrorProcess, free_port
from test_pull import skopeo_copy

from mirror.cache.layout import FORMAT_VERSION

FIXTURES = Path(__file__).parent / "fixtures"


def old_cache(root: Path) -> dict[str, str]:
    """Unpack the format-1 cache as root/cache; returns tag -> manifest digest as it was written."""
    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(FIXTURES / "cache-format-1.tar.gz") as tar:
        # Debian 12's Python (3.11.2) predates extraction filters (3.11.4): there the members are
        # checked here instead, as the "data" filter would (plain files and directories inside root).
        for member in tar.getmembers():
            inside = not member.name.startswith("/") and ".." not in member.name.split("/")
            assert inside and (member.isfile() or member.isdir()), member.name
        if hasattr(tarfile, "data_filter"):
            tar.extractall(root, filter="data")
        else:
            tar.extractall(root)
    expected: dict[str, str] = json.loads((FIXTURES / "cache-format-1.json").read_text())
    return expected


def pickled_rows(cache: Path) -> int:
    connection = sqlite3.connect(cache / "meta" / "cache.db")
    try:
        count: int = connection.execute("SELECT count(*) FROM Cache WHERE raw = 0").fetchone()[0]
        return count
    finally:
        connection.close()


def mirror_command(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mirror", *args, "--config", str(config)], capture_output=True, text=True, timeout=60
    )


def test_a_cache_written_by_0223d2e_opens_and_serves(tmp_path: Path) -> None:
    root = tmp_path / "mirror"
    expected = old_cache(root)
    assert pickled_rows(root / "cache") > 0, "the fixture holds format 1's pickles"
    # The upstream is down: everything must come from the upgraded cache.
    mirror = MirrorProcess(root, {"docker.io": f"http://127.0.0.1:{free_port()}"})
    try:
        mirror.start()
        for reference, digest in expected.items():
            name, tag = reference.split(":")
            response = httpx.get(
                f"{mirror.url}/v2/{name}/manifests/{tag}", headers={"Accept": ", ".join(ALL_MANIFESTS)}
            )
            assert response.status_code == 200, response.text
            assert response.headers["docker-content-digest"] == digest
            assert response.headers["x-cache"] == "STALE"
        skopeo_copy(mirror, "library/demo:latest", tmp_path / "demo")  # skopeo checks every digest
    finally:
        mirror.stop()
    assert (root / "cache" / "FORMAT").read_text() == f"{FORMAT_VERSION}\n"
    assert pickled_rows(root / "cache") == 0, "no pickle left behind"

    listed = mirror_command("ls", "--json", config=mirror.root / "config.toml")
    rows = {f"{row['repository']}:{row['tag']}": row for row in json.loads(listed.stdout)}
    assert {name: row["digest"] for name, row in rows.items()} == expected
    assert rows["library/multi:latest"]["platforms"] == ["linux/amd64", "linux/arm64"]
    assert rows["library/demo:latest"]["platforms"] == ["linux/amd64"]


def test_a_newer_format_is_refused_not_misread(tmp_path: Path) -> None:
    root = tmp_path / "mirror"
    old_cache(root)
    (root / "cache" / "FORMAT").write_text(f"{FORMAT_VERSION + 1}\n")
    mirror = MirrorProcess(root, {"docker.io": f"http://127.0.0.1:{free_port()}"})
    config = mirror.write_config()
    for command in (["serve"], ["ls"], ["gc"]):
        result = mirror_command(*command, config=config)
        assert result.returncode == 2, (command, result.stderr)
        assert f"format {FORMAT_VERSION + 1}, written by a newer mirror" in result.stderr
        assert "Traceback" not in result.stderr
    assert pickled_rows(root / "cache") > 0, "nothing was rewritten"


def test_format_1_rows_written_after_an_upgrade_are_upgraded_too(tmp_path: Path) -> None:
    """An older server still running when a newer tool upgraded the cache may write format-1 rows."""
    root = tmp_path / "mirror"
    expected = old_cache(root)
    cache = root / "cache"
    (cache / "FORMAT").write_text(f"{FORMAT_VERSION}\n")  # as if upgraded, but with every row still format 1
    connection = sqlite3.connect(cache / "meta" / "cache.db")
    try:  # and one row nobody can read: dropped with a warning, not a traceback
        connection.execute(
            "INSERT INTO Cache (key, raw, store_time, expire_time, access_time, access_count, tag, size, mode, "
            "filename, value) VALUES (?, 0, 0, NULL, 0, 0, NULL, 0, 1, NULL, 'x')",
            (b"\x80\x05\x8c\x03os\x8c\x06system\x93.",),  # a pickle of os.system
        )
        connection.commit()
    finally:
        connection.close()
    mirror = MirrorProcess(root, {"docker.io": f"http://127.0.0.1:{free_port()}"})
    listed = mirror_command("ls", "--json", config=mirror.write_config())
    assert listed.returncode == 0, listed.stderr
    assert {f"{row['repository']}:{row['tag']}": row["digest"] for row in json.loads(listed.stdout)} == expected
    assert pickled_rows(cache) == 0
    assert "Traceback" not in listed.stderr
