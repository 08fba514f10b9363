"""The command line as an operator meets it: each message says what is wrong, in one line, with the fix.

Real `mirror` processes and commands against the session's registry.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support import ALL_MANIFESTS, Image, MirrorProcess, Registry, free_port
from test_reload import hangup

ACCEPT = {"Accept": ", ".join(ALL_MANIFESTS)}


def mirror_cli(
    *args: str, config: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "mirror", *args, *(["--config", str(config)] if config else [])]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})


@pytest.fixture
def two_registries(tmp_path: Path, registry: Registry, images: dict[str, Image]) -> Iterator[MirrorProcess]:
    """docker.io and ghcr.io both served by the session registry: the same names under two registries."""
    mirror = MirrorProcess(tmp_path / "m", {"docker.io": registry.url, "ghcr.io": registry.url}).start()
    try:
        for path in ("/v2/library/demo/manifests/latest", "/v2/ghcr.io/library/demo/manifests/latest"):
            assert httpx.get(f"{mirror.url}{path}", headers=ACCEPT).status_code == 200
        yield mirror
    finally:
        mirror.stop()


def test_ls_without_a_cache_says_so(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(f'[cache]\ndirectory = "{tmp_path / "nothing"}"\n')
    listed = mirror_cli("ls", config=tmp_path / "config.toml")
    assert listed.returncode == 1 and listed.stdout == ""
    assert listed.stderr.strip() == f"mirror ls: no cache at {tmp_path / 'nothing'}"


def test_ls_reads_names_as_docker_does(two_registries: MirrorProcess) -> None:
    config = two_registries.root / "config.toml"

    def upstreams(name: str) -> set[str]:
        return {row["upstream"] for row in json.loads(mirror_cli("ls", name, "--json", config=config).stdout)}

    assert upstreams("demo") == {"docker.io"}
    assert upstreams("library/demo") == {"docker.io"}, "org/app is Docker Hub's, not every registry's"
    assert upstreams("docker.io/demo") == {"docker.io"}
    assert upstreams("ghcr.io/library/demo") == {"ghcr.io"}
    assert "docker.io/library/demo" in mirror_cli("ls", "demo", config=config).stdout


def test_stats_is_a_table_without_reprs(two_registries: MirrorProcess) -> None:
    printed = mirror_cli("stats", config=two_registries.root / "config.toml")
    assert printed.returncode == 0, printed.stderr
    assert "upstreams.docker.io.requests" in printed.stdout and "upstreams.ghcr.io.manifest_gets" in printed.stdout
    for repr_mark in ("None", "{", "}", "'", "True", "False"):
        assert repr_mark not in printed.stdout, printed.stdout


@pytest.mark.parametrize(("client", "written"), [("docker", "daemon.json"), ("podman", "registries.conf")])
def test_client_config_writes_its_file_with_output(tmp_path: Path, client: str, written: str) -> None:
    out = tmp_path / "out"
    made = mirror_cli("client-config", client, "--url", "http://mirror.lan:5000", "--output", str(out))
    assert made.returncode == 0, made.stderr
    assert made.stdout == f"wrote {out / written}\n"
    printed = mirror_cli("client-config", client, "--url", "http://mirror.lan:5000").stdout
    assert (out / written).read_text() == printed


def test_rm_of_a_pinned_image_needs_force(two_registries: MirrorProcess) -> None:
    config = two_registries.root / "config.toml"
    assert mirror_cli("pin", "demo:latest", config=config).returncode == 0
    refused = mirror_cli("rm", "demo:latest", config=config)
    assert refused.returncode != 0
    assert "docker.io/library/demo:latest pinned" in refused.stderr and "--force" in refused.stderr
    assert "docker.io/library/demo" in mirror_cli("ls", "demo", config=config).stdout, "nothing removed"
    forced = mirror_cli("rm", "demo:latest", "--force", config=config)
    assert forced.returncode == 0 and "removed tag docker.io/library/demo:latest" in forced.stdout


def test_rm_of_a_pinned_image_needs_force_without_a_server(two_registries: MirrorProcess) -> None:
    config = two_registries.root / "config.toml"
    assert mirror_cli("pin", "demo:latest", config=config).returncode == 0
    two_registries.stop()
    refused = mirror_cli("rm", "demo:latest", config=config)
    assert refused.returncode == 1 and "pinned" in refused.stderr and "--force" in refused.stderr
    assert mirror_cli("rm", "demo:latest", "--force", config=config).returncode == 0


def test_an_unknown_mirror_variable_is_named_with_the_nearest_setting(tmp_path: Path) -> None:
    shown = mirror_cli("config", env={"MIRROR_CACHE_TAG_TLL": "5s", "MIRROR_ADMIN_CREDENTIALS": "a:b"})
    assert shown.returncode == 0
    assert shown.stderr.strip() == (
        "mirror: warning: MIRROR_CACHE_TAG_TLL is not a setting and is ignored (did you mean MIRROR_CACHE_TAG_TTL?)"
    )


def test_prefetch_of_a_missing_tag_says_it_in_one_line(mirror: MirrorProcess) -> None:
    result = mirror_cli("prefetch", "--url", mirror.url, "demo:no-such-tag")
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("mirror prefetch: docker.io/library/demo:no-such-tag: 404 ")
    assert "MANIFEST_UNKNOWN" in lines[0] and "{" not in lines[0]


def test_a_reload_compares_restart_keys_with_what_runs(mirror: MirrorProcess) -> None:
    config = mirror.root / "config.toml"
    original = config.read_text()
    config.write_text(original.replace(f"127.0.0.1:{mirror.port}", f"127.0.0.1:{free_port()}"))
    hangup(mirror, "need a restart to take effect: server.listen")
    config.write_text(original)
    hangup(mirror, "SIGHUP: config reloaded")
    last = [line for line in mirror.log_path.read_text().splitlines() if "SIGHUP: config reloaded" in line][-1]
    assert "restart" not in last, "listen is back to what runs"


def test_an_imported_image_is_not_said_to_be_pulled(tmp_path: Path, mirror: MirrorProcess) -> None:
    assert mirror_cli("prefetch", "--url", mirror.url, "demo:latest").returncode == 0
    mirror.wait_idle()
    archive = tmp_path / "demo.tar"
    exported = mirror_cli("export", "demo:latest", "-o", str(archive), config=mirror.root / "config.toml")
    assert exported.returncode == 0, exported.stderr
    (tmp_path / "other.toml").write_text(f'[cache]\ndirectory = "{tmp_path / "other"}"\n')
    imported = mirror_cli("import", str(archive), config=tmp_path / "other.toml")
    assert imported.returncode == 0, imported.stderr
    rows = json.loads(mirror_cli("ls", "--json", config=tmp_path / "other.toml").stdout)
    assert rows and all(row["last_pull"] is None and row["imported_at"] for row in rows)
    table = mirror_cli("ls", config=tmp_path / "other.toml").stdout
    assert "- (imported 20" in table
