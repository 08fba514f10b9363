"""The README's service section, played for real: the service as its own unprivileged user, root's commands beside it.

systemd is not here, so what the unit does is done by hand, the same way: the service runs as
uid 64321 (`setpriv`, umask 0077) in a mount namespace of its own, where its state directory is
reachable; outside, that directory lies below a directory only root may enter, as
/var/lib/private is for a `DynamicUser=`; its secret files come through $CREDENTIALS_DIRECTORY,
a directory only that user can read, as `LoadCredential=` makes it. Root's commands (import,
credentials, pin, rm, gc, verify) run outside, as root, with the README's config.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import httpx
import pytest
from fleet_parts import RedisServer
from support import ALL_MANIFESTS, ByPid, Image, Pusher, Registry, free_port, wait_for_http
from tools import tool

UID = GID = 64321
ACCEPT = {"Accept": ", ".join(ALL_MANIFESTS)}
OPS = ("ops", "ops-pass")
ADMIN = ("admin", "admin-pass")
# Inside the service's namespace: its state directory reachable, as systemd's bind mounts make it.
NAMESPACE = """set -e
mount --bind "$2" "$3"
mount -t tmpfs -o mode=0755 tmpfs "$1"
mkdir "$1/mirror"
mount --bind "$3" "$1/mirror"
shift 3
exec "$@"
"""


class Site:
    """/etc/mirror, /var/lib/private/mirror (and the /var/lib/mirror link), the credentials: under one directory."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.etc = home / "etc"
        self.private = home / "private"
        self.state = self.private / "mirror"
        self.lib = home / "lib" / "mirror"
        self.credentials = home / "credentials"
        self.port = free_port()
        for directory, mode in (
            (self.etc, 0o755),
            (self.private, 0o700),
            (home / "lib", 0o755),
            (home / "stage", 0o755),
        ):
            directory.mkdir(mode=mode)
            directory.chmod(mode)
        self.state.mkdir(mode=0o700)
        os.chown(self.state, UID, GID)
        self.lib.symlink_to(self.state)
        self.credentials.mkdir()

    def credential(self, name: str, text: str) -> None:
        """As LoadCredential= hands it over: a copy only the service's user can read."""
        path = self.credentials / name
        path.write_text(text)
        os.chown(path, UID, GID)
        path.chmod(0o400)
        os.chown(self.credentials, UID, GID)
        self.credentials.chmod(0o500)

    def write_config(self, text: str) -> Path:
        config = self.etc / "config.toml"
        config.write_text(f'[server]\nlisten = "127.0.0.1:{self.port}"\n[cache]\ndirectory = "{self.lib}"\n{text}')
        config.chmod(0o644)
        return config

    def env(self, **more: str) -> dict[str, str]:
        return {**os.environ, "CREDENTIALS_DIRECTORY": str(self.credentials), **more}

    def as_root(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`sudo mirror …` with the README's config (root's commands find the credentials where the unit's are)."""
        argv = [sys.executable, "-m", "mirror", *args, "--config", str(self.etc / "config.toml")]
        admin = "MIRROR_ADMIN_CREDENTIALS"
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=120, env=self.env(**{admin: ":".join(ADMIN)})
        )

    def owners(self) -> set[tuple[int, int]]:
        """(uid, gid) of everything in the state directory."""
        found = set()
        for directory, names, files in os.walk(self.state):
            for name in [*names, *files]:
                stat = os.lstat(Path(directory) / name)
                found.add((stat.st_uid, stat.st_gid))
        return found


class Service(ByPid):
    def __init__(self, site: Site) -> None:
        self.site = site
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.site.port}"

    def start(self) -> Service:
        site = self.site
        run_as = [tool("setpriv"), f"--reuid={UID}", f"--regid={GID}", "--clear-groups"]
        umask = [tool("sh"), "-c", 'umask 077; exec "$@"', "sh"]
        argv = [tool("unshare"), "--mount", "--propagation", "private", tool("sh"), "-c", NAMESPACE, "sh"]
        argv += [str(site.private), str(site.state), str(site.home / "stage"), *run_as, *umask]
        argv += [sys.executable, "-m", "mirror", "serve", "--config", str(site.etc / "config.toml")]
        with open(site.home / "service.log", "ab") as log:
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=site.env(PYTHONUNBUFFERED="1")
            )
        try:
            wait_for_http(f"{self.url}/healthz", self.process, timeout=30)
        except BaseException:
            self.stop()
            raise
        return self


@pytest.fixture
def site() -> Iterator[Site]:
    home = Path(tempfile.mkdtemp(prefix="mirror-service-", dir="/tmp"))  # not below root's 0700 pytest dir
    home.chmod(0o755)
    try:
        yield Site(home)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def htpasswd_line(user: str, password: str) -> str:
    return f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()}\n"


def pull(url: str, image: Image, auth: tuple[str, str]) -> None:
    """The manifest, then every blob it names, each checked against its digest (skopeo's oci-archive
    copy of an image has a manifest of its own: what the mirror serves is what is checked)."""
    with httpx.Client(base_url=url, auth=auth, timeout=60) as client:
        answer = client.get(f"/v2/{image.repository}/manifests/{image.tag}", headers=ACCEPT)
        assert answer.status_code == 200, answer.text
        manifest = json.loads(answer.content)
        for descriptor in [manifest["config"], *manifest["layers"]]:
            blob = client.get(f"/v2/{image.repository}/blobs/{descriptor['digest']}")
            assert blob.status_code == 200, (descriptor["digest"], blob.status_code)
            assert "sha256:" + hashlib.sha256(blob.content).hexdigest() == descriptor["digest"]


def test_roots_commands_and_the_services_user_agree(site: Site, tmp_path: Path) -> None:
    upstream = Registry(tmp_path / "registry").start()
    try:
        with Pusher(upstream.url) as pusher:
            imported = pusher.image("library/imported", "1", [96 * 1024, 4096], seed=501)
            pulled = pusher.image("library/pulled", "1", [64 * 1024, 4096], seed=502)
        archive = tmp_path / "imported.tar"  # root's file, mode 0600, as an operator's download would be
        copied = subprocess.run(
            [tool("skopeo"), "copy", "--src-tls-verify=false", f"docker://{upstream.url.split('://')[1]}/library/imported:1",
             f"oci-archive:{archive}:docker.io/library/imported:1"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert copied.returncode == 0, copied.stderr
        archive.chmod(0o600)
        site.credential("htpasswd", htpasswd_line(*OPS))
        site.credential("admin-htpasswd", htpasswd_line(*ADMIN))
        site.write_config(
            '[auth]\nhtpasswd = "$CREDENTIALS_DIRECTORY/htpasswd"\n'
            'admin_htpasswd = "$CREDENTIALS_DIRECTORY/admin-htpasswd"\n'
            f'login_keys = "{site.lib / "login-keys.json"}"\n'
            f'[upstreams."docker.io"]\nurl = "{upstream.url}"\n'
        )
        service = Service(site).start()
        try:
            pull(service.url, pulled, OPS)

            result = site.as_root("import", str(archive))
            assert result.returncode == 0, result.stderr
            assert "not pinned" not in result.stderr, result.stderr
            upstream.stop()  # the cache may be the only copy now
            pull(service.url, imported, OPS)

            issued = site.as_root("credentials", "issue", "--user", "ci", "--ttl", "1h")
            assert issued.returncode == 0, issued.stderr
            login = dict(line.split(": ", 1) for line in issued.stdout.strip().splitlines())
            assert httpx.get(f"{service.url}/v2/", auth=("ci", login["password"])).status_code == 200

            assert site.as_root("pin", "pulled:1").returncode == 0
            refused = site.as_root("rm", "pulled:1")
            assert refused.returncode != 0 and "pinned" in refused.stderr
            assert site.as_root("unpin", "pulled:1").returncode == 0
            removed = site.as_root("rm", "pulled:1")
            assert removed.returncode == 0 and "removed tag docker.io/library/pulled:1" in removed.stdout
            history = site.as_root("history", "imported:1")
            assert history.returncode == 0 and "1: 0 digest changes seen" in history.stdout, history.stderr
            accepted = site.as_root("tag", "accept", "imported:1")
            assert accepted.returncode == 0 and "imported:1: serves sha256:" in accepted.stdout, accepted.stderr
            for command in ("gc", "verify"):
                done = site.as_root(command)
                assert done.returncode == 0 and "removed 0" in done.stdout, (command, done.stdout, done.stderr)

            assert site.owners() == {(UID, GID)}, "everything in the state directory is the service's"
            pull(service.url, imported, OPS)  # still served, from what root's commands left
            assert "Traceback" not in (site.home / "service.log").read_text()
            service.stop()  # without a server, `tag accept` writes in the cache directory itself
            offline = site.as_root("tag", "accept", "imported:1")
            assert offline.returncode == 0 and "the next pull takes" in offline.stdout, offline.stderr
            assert site.owners() == {(UID, GID)}, "root's offline change is the service's too"
        finally:
            service.stop()
    finally:
        upstream.stop()


def test_secrets_reach_the_service_the_systemd_way(
    site: Site, tmp_path: Path, registry: Registry, images: dict[str, Image]
) -> None:
    """A password_file and the fleet secret, readable only by the service's user, through $CREDENTIALS_DIRECTORY."""
    redis = RedisServer(tmp_path / "redis").start()
    try:
        site.credential("dockerhub-token", "hub-token-0123\n")
        site.credential("fleet-secret", "a-fleet-secret-of-32-characters\n")
        site.write_config(
            f'[upstreams."docker.io"]\nurl = "{registry.url}"\nusername = "bot"\n'
            'password_file = "$CREDENTIALS_DIRECTORY/dockerhub-token"\n'
            f'[fleet]\nredis = "{redis.url}"\npeer_url = "http://127.0.0.1:{site.port}"\n'
            'secret_file = "$CREDENTIALS_DIRECTORY/fleet-secret"\n'
        )
        service = Service(site).start()
        try:
            stats = httpx.get(f"{service.url}/stats").json()
            assert stats["fleet"]["redis"] == "up", stats["fleet"]
            assert httpx.get(f"{service.url}/v2/library/demo/manifests/latest", headers=ACCEPT).status_code == 200
        finally:
            service.stop()
    finally:
        redis.stop()
