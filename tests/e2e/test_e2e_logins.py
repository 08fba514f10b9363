"""Temporary logins (`mirror credentials issue`) with the real Docker Engine.

A mirror with htpasswd (another user), `[auth] login_keys` and a rule that grants `ci`
docker.io/library/*. `docker login <mirror>` takes a credential the CLI issued, and a pull by
the mirror's name works until it expires; after that the same stored login is refused, and a
revoked one is refused by `docker login` and by pulls alike, without restarting the mirror.
Pulls name the mirror's host: Docker sends the login for `<mirror>` only to that registry.
The exact messages go to e2e-logins-messages.txt in the session's temporary directory.
"""

from __future__ import annotations

import base64
import calendar
import json
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest
from e2e_parts import MIRROR_CLI, ClientMessages, DockerEngine, Upstream, config_digest, run
from support import Image, MirrorProcess
from test_e2e_auth_tls import docker_with_input, htpasswd

pytestmark = pytest.mark.e2e

TTL = 20  # seconds: long enough for a login and a cold pull, short enough to wait out
MESSAGES = ClientMessages()
record = MESSAGES.record


@pytest.fixture(scope="module", autouse=True)
def messages_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    yield
    MESSAGES.write(tmp_path_factory.getbasetemp() / "e2e-logins-messages.txt")


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory, hub: Upstream) -> Iterator[MirrorProcess]:
    root = tmp_path_factory.mktemp("logins")
    users = htpasswd(root / "users.htpasswd", {"ops": "ops-pass"})  # ci is not in it: temporary logins only
    auth = (
        f'[auth]\nhtpasswd = "{users}"\nlogin_keys = "{root / "login-keys.json"}"\n'
        '[[auth.rules]]\nusers = ["ci"]\nrepositories = ["docker.io/library/*"]\n'
    )
    mirror = MirrorProcess(root / "m", {"docker.io": hub.registry.url}, extra_config=auth)
    mirror.start()
    try:
        yield mirror
    finally:
        mirror.stop()


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, mirror: MirrorProcess) -> Iterator[DockerEngine]:
    engine = DockerEngine(tmp_path_factory.mktemp("dk-logins"), mirror.url)
    try:
        engine.start()
        yield engine
    finally:
        engine.stop()


def credentials(mirror: MirrorProcess, *args: str) -> str:
    return run([MIRROR_CLI, "credentials", "--config", str(mirror.root / "config.toml"), *args], timeout=30).stdout


def issue(mirror: MirrorProcess, ttl: str) -> dict[str, str]:
    """`mirror credentials issue --user ci`: username, password, expires, id."""
    printed = credentials(mirror, "issue", "--user", "ci", "--ttl", ttl)
    return {key.strip(): value.strip() for key, value in (line.split(":", 1) for line in printed.splitlines())}


def expires_at(login: dict[str, str]) -> float:
    return float(calendar.timegm(time.strptime(login["expires"], "%Y-%m-%d %H:%M:%S UTC")))


def docker_login(engine: DockerEngine, host: str, password: str) -> subprocess.CompletedProcess[str]:
    return docker_with_input(engine, "login", host, "-u", "ci", "--password-stdin", stdin=password + "\n")


def stored_login(engine: DockerEngine, host: str) -> str | None:
    """The `user:password` the Docker CLI keeps for `host` in its config.json, if any."""
    auths = json.loads((engine.root / "cli" / "config.json").read_text()).get("auths", {})
    return base64.b64decode(auths[host]["auth"]).decode() if host in auths else None


def mirror_says(mirror: MirrorProcess, password: str) -> httpx.Response:
    """What the mirror answers `/v2/` for the login, as Docker's ping sees it."""
    return httpx.get(f"{mirror.url}/v2/", auth=("ci", password), timeout=10)


def by_name(host: str, image: Image) -> str:
    return f"{host}/{image.repository}:{image.tag}"


def test_docker_pulls_with_a_temporary_login_until_it_expires(
    mirror: MirrorProcess, engine: DockerEngine, hub: Upstream
) -> None:
    host = f"127.0.0.1:{mirror.port}"
    image, later = hub.images["auth"]["index"], hub.images["auth"]["schema2"]  # the index no other test pulls
    login = issue(mirror, f"{TTL}s")
    assert login["username"] == "ci" and login["id"]
    deadline = expires_at(login)
    try:
        logged_in = docker_login(engine, host, login["password"])
        assert logged_in.returncode == 0, logged_in.stderr
        assert "Login Succeeded" in logged_in.stdout
        assert stored_login(engine, host) == f"ci:{login['password']}"

        reference = by_name(host, image)
        engine.docker("pull", reference)
        try:
            image_id = engine.docker("image", "inspect", "--format", "{{.Id}}", reference).stdout.strip()
            assert image_id == config_digest(image)
        finally:
            engine.docker("rmi", reference, check=False)
        assert time.time() < deadline, "the pull outlasted the login: raise TTL"

        # Logged in, but no rule grants ci a repository outside docker.io/library/*.
        denied = record(
            "docker pull, logged in, no rule grants the repository",
            engine.docker("pull", f"{host}/someorg/app:latest", check=False),
        )
        assert "ci may not read docker.io/someorg/app" in denied, denied

        time.sleep(max(0.0, deadline - time.time()) + 1.5)
        answer = mirror_says(mirror, login["password"])
        assert answer.status_code == 401 and answer.headers["WWW-Authenticate"] == 'Basic realm="mirror"'
        message = answer.json()["errors"][0]["message"]
        assert message == f"this temporary login expired at {login['expires']}; ask for a new one", message

        # The CLI still holds the login; the mirror refuses it before asking the upstream for anything.
        assert stored_login(engine, host) == f"ci:{login['password']}"
        mark = hub.registry.mark()
        refused = record(
            "docker pull, the temporary login expired", engine.docker("pull", by_name(host, later), check=False)
        )
        assert refused.endswith(f"unauthorized: {message}"), refused
        assert hub.registry.requests_since(mark) == []

        # `docker login` shows only the status, not the mirror's reason.
        again = record("docker login, the temporary login expired", docker_login(engine, host, login["password"]))
        assert again.endswith(f"login attempt to http://{host}/v2/ failed with status: 401 Unauthorized"), again
        assert login["password"] not in mirror.log_path.read_text(errors="replace"), "a credential is never logged"
    finally:
        engine.docker("logout", host, check=False)


def test_docker_login_refuses_a_revoked_credential(mirror: MirrorProcess, engine: DockerEngine, hub: Upstream) -> None:
    host = f"127.0.0.1:{mirror.port}"
    login = issue(mirror, "1h")
    try:
        logged_in = docker_login(engine, host, login["password"])
        assert logged_in.returncode == 0, logged_in.stderr

        assert credentials(mirror, "revoke", login["id"]).strip() == f"revoked {login['id']}"  # no restart
        answer = mirror_says(mirror, login["password"])
        assert answer.status_code == 401
        assert answer.json()["errors"][0]["message"] == "this temporary login was revoked"

        refused = record("docker login, the temporary login revoked", docker_login(engine, host, login["password"]))
        assert refused.endswith(f"login attempt to http://{host}/v2/ failed with status: 401 Unauthorized"), refused
        # The CLI keeps the login it stored before; a pull with it is refused, saying why.
        assert stored_login(engine, host) == f"ci:{login['password']}"
        pulled = record(
            "docker pull, logged in before the revocation",
            engine.docker("pull", by_name(host, hub.images["auth"]["index"]), check=False),
        )
        assert pulled.endswith("unauthorized: this temporary login was revoked"), pulled
    finally:
        engine.docker("logout", host, check=False)
