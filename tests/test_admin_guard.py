"""The admin side: closed by default where clients log in, safe from other sites, bounded.

Real mirror processes; requests as a browser on another site or a flood of wrong passwords send them.
"""

from __future__ import annotations

import json
import socket
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import httpx
import pytest
from support import Image, MirrorProcess, Registry
from test_access import htpasswd

ADMIN_PATHS = ["/v2/_catalog", "/stats", "/metrics", "/api/images", "/api/dashboard", "/"]
RULES = '[[auth.rules]]\nusers = ["ci"]\nrepositories = ["docker.io/**"]\n'


@pytest.fixture
def teams(tmp_path: Path, registry: Registry, images: dict[str, Image]) -> Iterator[MirrorProcess]:
    """The README's multi-team set-up: client logins and rules, and no admin_htpasswd."""
    users = htpasswd(tmp_path / "users.htpasswd", {"ci": "ci-pass"})
    config = f'[auth]\nhtpasswd = "{users}"\n{RULES}'
    mirror = MirrorProcess(tmp_path / "m", {"docker.io": registry.url}, extra_config=config, auto_admin=False)
    mirror.start()
    try:
        yield mirror
    finally:
        mirror.stop()


def test_admin_paths_are_closed_without_admin_logins(teams: MirrorProcess) -> None:
    for path in ADMIN_PATHS:
        for auth in (None, ("ci", "ci-pass")):
            response = httpx.get(f"{teams.url}{path}", auth=auth)
            assert response.status_code == 403, (path, response.status_code)
            assert "admin_htpasswd" in response.json()["errors"][0]["message"]
    for path in ("/api/rm", "/api/pin", "/api/tag-accept"):
        response = httpx.post(f"{teams.url}{path}", json={"targets": ["library/demo:latest"]})
        assert response.status_code == 403 and "admin_htpasswd" in response.text
    assert httpx.get(f"{teams.url}/v2/library/demo/manifests/latest").status_code == 401
    assert httpx.get(f"{teams.url}/healthz").status_code == 200


@pytest.fixture
def admins(tmp_path: Path, registry: Registry, images: dict[str, Image]) -> Iterator[MirrorProcess]:
    operators = htpasswd(tmp_path / "admins.htpasswd", {"ops": "ops-pass"})
    config = f'[auth]\nadmin_htpasswd = "{operators}"\n'
    mirror = MirrorProcess(tmp_path / "m", {"docker.io": registry.url}, extra_config=config, admin=("ops", "ops-pass"))
    mirror.start()
    try:
        yield mirror
    finally:
        mirror.stop()


def post(mirror: MirrorProcess, path: str, body: bytes, **headers: str) -> httpx.Response:
    return httpx.post(f"{mirror.url}{path}", content=body, headers=headers, auth=("ops", "ops-pass"))


def test_a_change_from_another_site_is_refused(admins: MirrorProcess) -> None:
    """An HTML form on any page the admin visits once removed images with the browser's cached login."""
    body = json.dumps({"targets": ["library/demo:latest"]}).encode()
    as_form = post(admins, "/api/rm", body, **{"Content-Type": "text/plain"})
    assert as_form.status_code == 415 and "application/json" in as_form.text
    cross_origin = post(
        admins, "/api/rm", body, **{"Content-Type": "application/json", "Origin": "https://evil.example"}
    )
    assert cross_origin.status_code == 403
    cross_site = post(admins, "/api/pin", body, **{"Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"})
    assert cross_site.status_code == 403
    same_origin = post(admins, "/api/rm", body, **{"Content-Type": "application/json", "Origin": admins.url})
    assert same_origin.status_code == 200, same_origin.text


def test_admin_bodies_are_capped_and_bad_input_is_echoed_short(admins: MirrorProcess) -> None:
    huge = b'{"targets": ["' + b"a" * (2 * 1024 * 1024) + b'"]}'
    too_large = post(admins, "/api/rm", huge, **{"Content-Type": "application/json"})
    assert too_large.status_code == 413
    bad = json.dumps({"targets": ["Not An Image " + "x" * 100_000]}).encode()
    refused = post(admins, "/api/rm", bad, **{"Content-Type": "application/json"})
    assert refused.status_code == 400 and len(refused.content) < 1000


def test_an_open_mirror_shows_its_pages_and_takes_changes_from_this_host(mirror: MirrorProcess) -> None:
    for path in ADMIN_PATHS:
        assert httpx.get(f"{mirror.url}{path}").status_code == 200, path
    removed = httpx.post(f"{mirror.url}/api/rm", json={"targets": ["library/demo:latest"]})
    assert removed.status_code == 200


@pytest.fixture
def slow_hashes(tmp_path: Path, registry: Registry, images: dict[str, Image]) -> Iterator[MirrorProcess]:
    """Users hashed at bcrypt cost 10 (tens of ms a check), as a real htpasswd -B -C 10 makes them."""
    line = f"ci:{bcrypt.hashpw(b'ci-pass', bcrypt.gensalt(rounds=10)).decode()}\n"
    (tmp_path / "users.htpasswd").write_text(line)
    config = f'[auth]\nhtpasswd = "{tmp_path / "users.htpasswd"}"\n'
    mirror = MirrorProcess(tmp_path / "m", {"docker.io": registry.url}, extra_config=config).start()
    try:
        yield mirror
    finally:
        mirror.stop()


def _median_refusal(mirror: MirrorProcess, user: str, times: int) -> float:
    took = []
    for attempt in range(times):
        started = time.perf_counter()
        response = httpx.get(f"{mirror.url}/v2/", auth=(user, f"wrong-{attempt}"))
        took.append(time.perf_counter() - started)
        assert response.status_code == 401
    return statistics.median(took)


def test_unknown_users_take_as_long_and_floods_are_told_to_wait(slow_hashes: MirrorProcess) -> None:
    known = _median_refusal(slow_hashes, "ci", 7)
    unknown = _median_refusal(slow_hashes, "nobody", 7)
    assert unknown > known / 2, f"unknown users answered in {unknown * 1000:.1f} ms, known in {known * 1000:.1f} ms"
    for attempt in range(3):  # ci's 8th to 10th wrong password in the window
        assert httpx.get(f"{slow_hashes.url}/v2/", auth=("ci", f"more-{attempt}")).status_code == 401
    flooded = httpx.get(f"{slow_hashes.url}/v2/", auth=("ci", "again"))
    assert flooded.status_code == 429 and flooded.headers["retry-after"] == "60"
    assert httpx.get(f"{slow_hashes.url}/v2/", auth=("ci", "ci-pass")).status_code == 429, "not even the right one"


def test_the_head_limit_counts_the_head_only(mirror: MirrorProcess) -> None:
    """A client that does not wait for 100 Continue sends its body with the head, in the same packets."""
    body = json.dumps({"targets": ["library/demo:latest"], "pad": "x" * 100_000}).encode()
    head = (
        f"POST /api/rm HTTP/1.1\r\nHost: 127.0.0.1:{mirror.port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", mirror.port), timeout=10) as connection:
        connection.sendall(head + body)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
