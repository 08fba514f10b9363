"""The systemd unit passes `systemd-analyze verify` and its hardening scores well."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tools import tool

from mirror.config import load
from mirror.http.drain import AFTER_DRAIN_GRACE

UNIT = Path(__file__).parent.parent / "systemd" / "mirror.service"


def local_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's mirror (verify checks it exists)."""
    mirror = Path(sys.executable).parent / "mirror"
    unit = tmp_path / "mirror.service"
    unit.write_text(UNIT.read_text().replace("/opt/mirror/bin/mirror", str(mirror)))
    return unit


def test_unit_verifies(tmp_path: Path) -> None:
    result = subprocess.run(
        [tool("systemd-analyze"), "verify", str(local_unit(tmp_path))], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "mirror.service" not in result.stderr, result.stderr
    assert "ExecStart=/opt/mirror/bin/mirror serve --config /etc/mirror/config.toml" in UNIT.read_text()
    assert "ExecReload=/bin/kill -HUP $MAINPID" in UNIT.read_text()


def test_unit_is_hardened(tmp_path: Path) -> None:
    result = subprocess.run(
        [tool("systemd-analyze"), "security", "--offline=yes", str(local_unit(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for mirror.service: ([\d.]+)", result.stdout + result.stderr)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout
    text = UNIT.read_text()
    for setting in (
        "DynamicUser=yes",
        "StateDirectory=mirror",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "Restart=on-failure",
    ):
        assert setting in text


def test_stop_waits_for_the_drain() -> None:
    """systemd sends SIGTERM, and waits longer than the default drain before it kills."""
    settings = dict(line.split("=", 1) for line in UNIT.read_text().splitlines() if "=" in line)
    assert settings["KillSignal"] == "SIGTERM"
    stop_seconds = float(settings["TimeoutStopSec"].removesuffix("s"))
    assert stop_seconds > load(None, env={}).server.drain_timeout + AFTER_DRAIN_GRACE + 5
