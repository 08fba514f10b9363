"""An unreachable upstream says why, in the client's 503, /stats and the log (once, at WARNING).

Name resolution fails inside a private mount namespace whose resolv.conf names 127.0.0.1,
where no DNS server listens: no query leaves the machine.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import httpx
import pytest
from egress_parts import private_names
from support import MirrorProcess, free_port


def _ask(mirror: MirrorProcess, times: int = 3) -> httpx.Response:
    for _ in range(times):
        response = httpx.get(f"{mirror.url}/v2/library/alpine/manifests/3.19", timeout=30)
    return response


def _warnings(mirror: MirrorProcess, text: str) -> int:
    return sum(1 for line in mirror.log_path.read_text().splitlines() if "WARNING" in line and text in line)


def test_a_name_that_does_not_resolve_names_the_cause_and_the_fix(tmp_path: Path) -> None:
    names = private_names(tmp_path / "names", {})
    url = f"http://registry.nowhere.test:{free_port()}"
    mirror = MirrorProcess(tmp_path / "m", {"docker.io": url}, wrapper=names).start()
    try:
        response = _ask(mirror)
        assert response.status_code == 503
        error = response.json()["errors"][0]
        assert "name resolution failed for registry.nowhere.test" in error["message"]
        assert "internal one" in error["message"] and "HTTPS_PROXY" in error["message"]
        assert error["detail"]["setting"] == "url"
        health = mirror.stats()["upstreams"]["docker.io"]["health"]
        assert not health["answering"] and "name resolution failed" in health["last_error_message"]
        assert _warnings(mirror, "is unreachable: name resolution failed") == 1, "said once, when it began to fail"
        assert _warnings(mirror, "at start-up: docker.io DNS failed: name resolution failed") == 1
    finally:
        mirror.stop()


def test_a_refusing_port_says_nothing_listens(tmp_path: Path) -> None:
    port = free_port()
    mirror = MirrorProcess(tmp_path / "m", {"docker.io": f"http://127.0.0.1:{port}"}).start()
    try:
        response = _ask(mirror)
        assert response.status_code == 503
        message = response.json()["errors"][0]["message"]
        assert f"127.0.0.1:{port} refused the connection: nothing listens there" in message
        assert _warnings(mirror, "is unreachable") == 1
        assert _warnings(mirror, "at start-up: docker.io TCP failed") == 1
    finally:
        mirror.stop()


def test_a_tls_probe_on_the_plain_port_is_no_warning(mirror: MirrorProcess) -> None:
    """podman and skopeo send a real ClientHello first; it is said once at INFO, and nothing else changes."""
    context = ssl.create_default_context()
    for _ in range(2):
        with (
            socket.create_connection(("127.0.0.1", mirror.port), timeout=10) as raw,
            pytest.raises((ssl.SSLError, OSError)),
        ):
            context.wrap_socket(raw, server_hostname="127.0.0.1")
    assert httpx.get(f"{mirror.url}/v2/").status_code == 200
    log = mirror.log_path.read_text()
    assert "Invalid HTTP request" not in log
    assert log.count("a TLS handshake on the plain-HTTP port") == 1
    assert all("TLS handshake" not in line for line in log.splitlines() if "WARNING" in line)
