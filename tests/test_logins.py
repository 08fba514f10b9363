"""Temporary logins: `mirror credentials issue` prints a login that real clients take until it expires.

Real clients: `podman login` and skopeo (Docker's `docker login` is in the e2e suite).
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from support import ALL_MANIFESTS, Image, MirrorProcess, Registry
from test_access import htpasswd
from test_pull import verify_dir_copy
from tools import tool

ACCEPT = {"Accept": ", ".join(ALL_MANIFESTS)}
RULES = '[[auth.rules]]\nusers = ["ci"]\nrepositories = ["docker.io/library/*"]\n'


@pytest.fixture
def guarded(tmp_path: Path, registry: Registry, images: dict[str, Image]) -> Iterator[MirrorProcess]:
    users = htpasswd(tmp_path / "users.htpasswd", {"ops": "ops-pass"})  # ci is not in it: temporary only
    auth = f'[auth]\nhtpasswd = "{users}"\nlogin_keys = "{tmp_path / "login-keys.json"}"\n{RULES}'
    mirror = MirrorProcess(tmp_path / "m", {"docker.io": registry.url}, extra_config=auth).start()
    try:
        yield mirror
    finally:
        mirror.stop()


def credentials(mirror: MirrorProcess, *args: str) -> str:
    argv = [sys.executable, "-m", "mirror", "credentials", "--config", str(mirror.root / "config.toml"), *args]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout


def issue(mirror: MirrorProcess, ttl: str = "1h") -> dict[str, str]:
    printed = credentials(mirror, "issue", "--user", "ci", "--ttl", ttl)
    return {key.strip(): value.strip() for key, value in (line.split(":", 1) for line in printed.splitlines())}


def read(mirror: MirrorProcess, password: str, user: str = "ci") -> httpx.Response:
    return httpx.get(f"{mirror.url}/v2/library/demo/manifests/latest", auth=(user, password), headers=ACCEPT)


def podman_login(mirror: MirrorProcess, password: str, authfile: Path) -> subprocess.CompletedProcess[str]:
    argv = [tool("podman"), "login", "--tls-verify=false", "--authfile", str(authfile), "-u", "ci", "--password-stdin"]
    return subprocess.run(
        [*argv, f"127.0.0.1:{mirror.port}"], input=password, capture_output=True, text=True, timeout=60
    )


def test_a_temporary_login_works_with_real_clients_until_it_expires(
    guarded: MirrorProcess, images: dict[str, Image], tmp_path: Path
) -> None:
    login = issue(guarded, ttl="5s")
    assert login["username"] == "ci"
    authfile = tmp_path / "auth.json"
    logged_in = podman_login(guarded, login["password"], authfile)
    assert logged_in.returncode == 0, logged_in.stderr
    pulled = subprocess.run(
        [
            tool("skopeo"),
            "copy",
            "--src-tls-verify=false",
            "--authfile",
            str(authfile),
            f"docker://127.0.0.1:{guarded.port}/library/demo:latest",
            f"dir:{tmp_path / 'pull'}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert pulled.returncode == 0, pulled.stderr
    verify_dir_copy(tmp_path / "pull", images["demo"])
    time.sleep(5.5)
    expired = read(guarded, login["password"])
    assert expired.status_code == 401
    assert "expired at" in expired.json()["errors"][0]["message"]
    assert podman_login(guarded, login["password"], tmp_path / "again.json").returncode != 0
    assert login["password"] not in guarded.log_path.read_text(), "a credential is never logged"


def test_revoking_and_rotating_end_logins(guarded: MirrorProcess) -> None:
    first = issue(guarded)
    revoked = issue(guarded)
    assert read(guarded, first["password"]).status_code == 200
    credentials(guarded, "revoke", revoked["id"])
    refused = read(guarded, revoked["password"])
    assert refused.status_code == 401 and "revoked" in refused.json()["errors"][0]["message"]
    old_key = credentials(guarded, "keys").split()[0]
    credentials(guarded, "rotate")
    second = issue(guarded)  # signed by the new key
    assert read(guarded, first["password"]).status_code == 200, "rotation overlaps: the old key still verifies"
    credentials(guarded, "drop", old_key)
    dropped = read(guarded, first["password"])
    assert dropped.status_code == 401 and "no longer accepted" in dropped.json()["errors"][0]["message"]
    assert read(guarded, second["password"]).status_code == 200
    assert read(guarded, second["password"] + "x").status_code == 401
    assert read(guarded, second["password"], user="ops").status_code == 401, "issued to ci, not to ops"


def test_the_kubernetes_secret_holds_the_login(guarded: MirrorProcess) -> None:
    printed = credentials(guarded, "issue", "--user", "ci", "--kubernetes-secret", "mirror-pull", "--server", "m:5000")
    secret = yaml.safe_load(printed)
    assert secret["kind"] == "Secret" and secret["type"] == "kubernetes.io/dockerconfigjson"
    assert secret["metadata"]["name"] == "mirror-pull"
    config = json.loads(base64.b64decode(secret["data"][".dockerconfigjson"]))
    login = config["auths"]["m:5000"]
    assert base64.b64decode(login["auth"]).decode() == f"ci:{login['password']}"
    assert read(guarded, login["password"]).status_code == 200
