"""`mirror doctor` against what goes wrong on a first day: each line, and the exit code.

The dead name fails inside a private mount namespace whose resolv.conf names 127.0.0.1, where no
DNS server listens: nothing leaves the machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from egress_parts import private_names
from support import Image, Registry, free_port
from test_access import htpasswd

UID = GID = 64321


def doctor(tmp_path: Path, config: Path) -> subprocess.CompletedProcess[str]:
    argv = [*private_names(tmp_path / "names", {}), sys.executable, "-m", "mirror", "doctor", "--config", str(config)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def lines_of(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """check name -> the whole line."""
    found = {}
    for line in result.stdout.splitlines():
        status, _, rest = line.partition(" ")
        if status in ("ok", "FAIL"):
            found[rest.strip().split(": ", 1)[0]] = line
    return found


def test_doctor_names_each_problem_and_its_fix(tmp_path: Path, registry: Registry, images: dict[str, Image]) -> None:
    cache = tmp_path / "cache"
    (cache / "blobs").mkdir(parents=True)
    (cache / "blobs" / "left-by-root").write_text("x")  # what a root-run command once left behind
    for path in (cache, cache / "blobs"):
        os.chown(path, UID, GID)
    users = htpasswd(tmp_path / "users.htpasswd", {"ci": "ci-pass"})
    users.chmod(0o600)  # root's, unreadable by the service's user
    refused = free_port()
    config = tmp_path / "config.toml"
    config.write_text(
        f'[server]\nlisten = "127.0.0.1:{free_port()}"\n[cache]\ndirectory = "{cache}"\n'
        f'[auth]\nhtpasswd = "{users}"\n'
        f'[upstreams."docker.io"]\nurl = "{registry.url}"\nusername = "bot"\npassword = "token"\n'
        '[upstreams."ghcr.io"]\nurl = "http://registry.nowhere.test:5000"\n'
        f'[upstreams."quay.io"]\nurl = "http://127.0.0.1:{refused}"\n'
    )
    result = doctor(tmp_path, config)
    assert result.returncode == 1, result.stdout + result.stderr
    found = lines_of(result)
    assert found["config"].startswith("ok") and str(config) in found["config"]
    assert (
        found["cache"].startswith("FAIL")
        and "left-by-root" in found["cache"]
        and f"chown -R {UID}:{GID}" in found["cache"]
    )
    assert found["file auth.htpasswd"].startswith("FAIL") and "LoadCredential=" in found["file auth.htpasswd"]
    assert found["docker.io DNS"].startswith("ok") and found["docker.io TCP"].startswith("ok")
    assert found["docker.io /v2/"].startswith("ok") and "answers 200" in found["docker.io /v2/"]
    assert found["docker.io login"].startswith("ok") and "bot is accepted" in found["docker.io login"]
    assert (
        found["ghcr.io DNS"].startswith("FAIL")
        and "name resolution failed for registry.nowhere.test" in found["ghcr.io DNS"]
    )
    assert "ghcr.io TCP" not in found, "a check that cannot run after a failure is not printed"
    assert found["quay.io DNS"].startswith("ok")
    assert (
        found["quay.io TCP"].startswith("FAIL")
        and f"127.0.0.1:{refused} refused the connection" in found["quay.io TCP"]
    )
    assert found["clock"].startswith("ok") and found["listen"].startswith("ok")
    assert result.stdout.rstrip().endswith("checks failed")


def test_doctor_passes_a_sound_set_up(tmp_path: Path, registry: Registry, images: dict[str, Image]) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[server]\nlisten = "127.0.0.1:{free_port()}"\n[cache]\ndirectory = "{tmp_path / "cache"}"\n'
        f'[upstreams."docker.io"]\nurl = "{registry.url}"\n'
    )
    result = doctor(tmp_path, config)
    assert result.returncode == 0, result.stdout
    assert result.stdout.rstrip().startswith("ok") and "checks passed" in result.stdout
