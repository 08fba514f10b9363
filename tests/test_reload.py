"""SIGHUP: the config and the files it names are read again and applied, nothing dropped."""

from __future__ import annotations

import hashlib
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from pacing import PacedUpstream
from support import ALL_MANIFESTS, Image, MirrorProcess, Registry
from test_access import htpasswd, self_signed

ACCEPT = {"Accept": ", ".join(ALL_MANIFESTS)}


def hangup(mirror: MirrorProcess, expect: str) -> None:
    """SIGHUP, then wait for the log line that says how it went."""
    assert mirror.process is not None
    seen = mirror.log_path.read_text().count(expect)
    mirror.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while mirror.log_path.read_text().count(expect) == seen:
        assert time.monotonic() < deadline, f"no {expect!r} in the log"
        time.sleep(0.05)


def test_a_pull_streams_through_a_reload(tmp_path: Path, registry: Registry, images: dict[str, Image]) -> None:
    demo = images["demo"]
    layer = max(demo.blobs, key=lambda digest: len(demo.blobs[digest]))
    with PacedUpstream(registry, tmp_path / "paced", rate="32k") as paced:
        mirror = MirrorProcess(tmp_path / "m", {"docker.io": paced.url}).start()
        try:
            received: list[bytes] = []

            def pull() -> None:
                with httpx.stream("GET", f"{mirror.url}/v2/library/demo/blobs/{layer}", timeout=60) as response:
                    received.extend(response.iter_bytes())

            puller = threading.Thread(target=pull)
            puller.start()
            deadline = time.monotonic() + 10
            while not received and time.monotonic() < deadline:  # streaming: bytes have come
                time.sleep(0.02)
            hangup(mirror, "SIGHUP: config reloaded")
            assert puller.is_alive(), "the pull was still streaming at the reload"
            puller.join(60)
            assert b"".join(received) == demo.blobs[layer]
            assert mirror.process is not None and mirror.process.poll() is None
        finally:
            mirror.stop()


def test_a_user_added_to_htpasswd_logs_in_without_a_restart(
    tmp_path: Path, registry: Registry, images: dict[str, Image]
) -> None:
    users = tmp_path / "users.htpasswd"
    htpasswd(users, {"ci": "ci-pass"})
    mirror = MirrorProcess(
        tmp_path / "m", {"docker.io": registry.url}, extra_config=f'[auth]\nhtpasswd = "{users}"\n'
    ).start()
    try:
        url = f"{mirror.url}/v2/library/demo/manifests/latest"
        assert httpx.get(url, headers=ACCEPT, auth=("ops", "ops-pass")).status_code == 401
        htpasswd(users, {"ci": "ci-pass", "ops": "ops-pass"})
        hangup(mirror, "SIGHUP: config reloaded")
        assert httpx.get(url, headers=ACCEPT, auth=("ops", "ops-pass")).status_code == 200
        assert httpx.get(url, headers=ACCEPT, auth=("ci", "ci-pass")).status_code == 200
    finally:
        mirror.stop()


def served_certificate(port: int) -> str:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port)) as raw, context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def test_a_renewed_certificate_is_served_to_new_connections(tmp_path: Path, registry: Registry) -> None:
    cert, key = self_signed(tmp_path / "old" / "certs")
    live_cert, live_key = tmp_path / "mirror.crt", tmp_path / "mirror.key.pem"
    shutil.copyfile(cert, live_cert)
    shutil.copyfile(key, live_key)
    tls = f'tls_cert = "{live_cert}"\ntls_key = "{live_key}"\n'
    mirror = MirrorProcess(tmp_path / "m", {"docker.io": registry.url}, server_config=tls, scheme="https")
    mirror.env = {"SSL_CERT_FILE": str(cert)}  # so that start() can reach /healthz
    try:
        mirror.start()
        before = served_certificate(mirror.port)
        with socket.create_connection(("127.0.0.1", mirror.port)):  # an open connection, kept over the reload
            renewed_cert, renewed_key = self_signed(tmp_path / "new" / "certs")
            shutil.copyfile(renewed_cert, live_cert)
            shutil.copyfile(renewed_key, live_key)
            hangup(mirror, "SIGHUP: config reloaded")
            after = served_certificate(mirror.port)
        assert before != after
        assert after == hashlib.sha256(ssl.PEM_cert_to_DER_cert(renewed_cert.read_text())).hexdigest()
    finally:
        mirror.stop()


def test_a_broken_config_is_refused_and_the_old_one_stays(
    tmp_path: Path, registry: Registry, images: dict[str, Image]
) -> None:
    rules = '[[auth.rules]]\nusers = ["*"]\nrepositories = ["docker.io/library/demo"]\n'
    mirror = MirrorProcess(tmp_path / "m", {"docker.io": registry.url}, extra_config=rules).start()
    try:
        url = f"{mirror.url}/v2/library/demo/manifests/latest"
        for _ in range(3):  # warm: answered by the protocol's fast path, which remembers the question
            assert httpx.get(url, headers=ACCEPT).status_code == 200
        config = mirror.root / "config.toml"
        good = config.read_text()
        config.write_text(good + '\n[upstreams."docker.io".colour]\n')
        hangup(mirror, "SIGHUP: the new config is refused")
        line = next(line for line in mirror.log_path.read_text().splitlines() if "is refused" in line)
        assert "upstreams.docker.io.colour" in line
        assert httpx.get(url, headers=ACCEPT).status_code == 200, "the old config stays in force"
        # A good one that grants less: the warm answer (and the remembered question) is refused now.
        config.write_text(good.replace('"docker.io/library/demo"', '"docker.io/library/other"'))
        hangup(mirror, "SIGHUP: config reloaded")
        assert httpx.get(url, headers=ACCEPT).status_code == 401
    finally:
        mirror.stop()


def test_config_check(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[cache]\ntag_ttl = "2m"\n')
    bad = tmp_path / "bad.toml"
    bad.write_text(f'[auth]\nhtpasswd = "{tmp_path / "missing"}"\n')
    ok = subprocess.run(
        [sys.executable, "-m", "mirror", "config", "--check", str(good)], capture_output=True, text=True
    )
    assert ok.returncode == 0 and "ok" in ok.stdout
    refused = subprocess.run(
        [sys.executable, "-m", "mirror", "config", "--check", str(bad)], capture_output=True, text=True
    )
    assert refused.returncode == 2 and "auth.htpasswd" in refused.stderr
