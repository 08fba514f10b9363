"""README "Access control and TLS", with the real Docker Engine and podman.

- A mirror with `[auth] htpasswd`: `docker login` / `podman login`, then a pull by the mirror's name.
  In `registry-mirrors`, Docker sends a guarded mirror only the credential it keeps for Docker Hub
  (`https://index.docker.io/v1/`), never the one from `docker login <mirror>`.
- A mirror with `[server] tls_cert`/`tls_key` from a private CA: Docker and podman refuse it until
  the CA is in their certs.d directory (private ones, bound over /etc/docker and /etc/containers
  inside the clients' own mount namespaces), then pull through it.

Docker treats every 127.0.0.0/8 registry as insecure (it appends 127.0.0.0/8 to
insecure-registries, and verifies no certificate there), so the TLS mirror is reached on an
extra address on this namespace's loopback interface, as a real remote mirror would be.
The exact messages the clients print go to e2e-auth-tls-messages.txt in the session's temporary
directory (and to stdout with -s), for the README's troubleshooting text.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from e2e_parts import (
    ClientMessages,
    DockerClient,
    DockerEngine,
    Podman,
    Upstream,
    assert_loopback_only,
    config_digest,
    run,
)
from support import Image, MirrorProcess
from tools import tool

pytestmark = pytest.mark.e2e

USER, PASSWORD = "ci", "pull-secret"
# TEST-NET-1 (RFC 5737), added to this namespace's lo for the module: not in 127.0.0.0/8.
REMOTE = "192.0.2.10"
MESSAGES = ClientMessages()
record = MESSAGES.record


@pytest.fixture(scope="module", autouse=True)
def messages_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    yield
    MESSAGES.write(tmp_path_factory.getbasetemp() / "e2e-auth-tls-messages.txt")


def htpasswd(path: Path, users: dict[str, str]) -> Path:
    lines = [f"{user}:{bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=4)).decode()}" for user, pw in users.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def docker_with_input(engine: DockerEngine, *args: str, stdin: str) -> subprocess.CompletedProcess[str]:
    assert_loopback_only()
    return subprocess.run(
        [engine.docker_cli, "-H", f"unix://{engine.socket}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env=engine.env,
    )


def daemon_said(engine: DockerEngine, since: int, about: str) -> str:
    """dockerd's log lines since byte `since` that mention `about`: what it hides behind a Docker Hub fallback."""
    with open(engine.log, "rb") as log:
        log.seek(since)
        lines = log.read().decode(errors="replace").splitlines()
    return "\n".join(line for line in lines if about in line and "Attempting next endpoint" in line)


def pulled_through(mirror: MirrorProcess, image: Image) -> bool:
    return f"/v2/{image.repository}/manifests/{image.tag}" in mirror.log_path.read_text(errors="replace")


# Access control


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, hub: Upstream) -> Iterator[MirrorProcess]:
    root = tmp_path_factory.mktemp("guarded")
    clients = htpasswd(root / "clients.htpasswd", {USER: PASSWORD})
    mirror = MirrorProcess(
        root / "m", {"docker.io": hub.registry.url}, extra_config=f'[auth]\nhtpasswd = "{clients}"\n'
    )
    mirror.start()
    try:
        yield mirror
    finally:
        mirror.stop()


@pytest.fixture(scope="module")
def guarded_docker(tmp_path_factory: pytest.TempPathFactory, guarded: MirrorProcess) -> Iterator[DockerEngine]:
    """dockerd set up with `mirror client-config docker --url http://127.0.0.1:PORT` (registry-mirrors)."""
    engine = DockerEngine(tmp_path_factory.mktemp("dk-guarded"), guarded.url)
    try:
        engine.start()
        yield engine
    finally:
        engine.stop()


def pull_and_check(engine: DockerEngine, mirror: MirrorProcess, reference: str, image: Image) -> None:
    client = DockerClient(engine, mirror)
    client.pull(reference)
    try:
        client.check(reference, image)
    finally:
        engine.docker("rmi", reference, check=False)


def test_docker_login_to_a_guarded_mirror(guarded: MirrorProcess, guarded_docker: DockerEngine, hub: Upstream) -> None:
    engine = guarded_docker
    image = hub.images["auth"]["schema2"]
    host = f"127.0.0.1:{guarded.port}"
    reference = f"{host}/{image.repository}:{image.tag}"

    refused = record("docker pull, not logged in", engine.docker("pull", reference, check=False))
    assert refused.endswith(f'"http://{host}/v2/{image.repository}/manifests/{image.tag}": no basic auth credentials')

    wrong = docker_with_input(engine, "login", host, "-u", USER, "--password-stdin", stdin="wrong\n")
    wrong_text = record("docker login, wrong password", wrong)
    assert wrong_text.endswith(f"login attempt to http://{host}/v2/ failed with status: 401 Unauthorized")

    login = docker_with_input(engine, "login", host, "-u", USER, "--password-stdin", stdin=PASSWORD + "\n")
    assert login.returncode == 0, login.stderr
    assert "Login Succeeded" in login.stdout
    auths = json.loads((engine.root / "cli" / "config.json").read_text())["auths"]
    assert base64.b64decode(auths[host]["auth"]).decode() == f"{USER}:{PASSWORD}"

    pull_and_check(engine, guarded, reference, image)

    engine.docker("logout", host)
    assert "no basic auth credentials" in engine.docker("pull", reference, check=False).stderr


def test_registry_mirrors_send_only_docker_hub_credentials(
    guarded: MirrorProcess, guarded_docker: DockerEngine, hub: Upstream
) -> None:
    """`docker pull NAME` asks for docker.io: the CLI sends the daemon the credential it has for Docker Hub,
    never one for the mirror's host, and the daemon answers the mirror's Basic challenge with that."""
    engine = guarded_docker
    image = hub.images["auth"]["oci"]
    host = f"127.0.0.1:{guarded.port}"
    reference = f"{image.repository.removeprefix('library/')}:{image.tag}"
    login = docker_with_input(engine, "login", host, "-u", USER, "--password-stdin", stdin=PASSWORD + "\n")
    assert login.returncode == 0, login.stderr
    try:
        # Logged in to the mirror's host: not used for docker.io images, the mirror says 401, and
        # Docker falls back to registry-1.docker.io (unreachable here), saying only that.
        since = engine.log.stat().st_size
        refused = record(
            "docker pull via registry-mirrors, logged in to the mirror host",
            engine.docker("pull", reference, check=False),
        )
        assert "registry-1.docker.io" in refused and host not in refused, refused
        logged = daemon_said(engine, since, host)
        MESSAGES["dockerd log for that pull"] = logged
        assert "no basic auth credentials" in logged, logged
        assert not pulled_through(guarded, image)

        # `docker login` without a server checks the credential against Docker Hub itself, never a mirror.
        hub_login = docker_with_input(engine, "login", "-u", USER, "--password-stdin", stdin=PASSWORD + "\n")
        assert "registry-1.docker.io" in record("docker login (Docker Hub) with the mirror's credential", hub_login)

        # The same credential stored for Docker Hub (what `docker login` without a server would store,
        # had Docker Hub accepted it) is the one the daemon sends to the mirror.
        config_path = engine.root / "cli" / "config.json"
        config = json.loads(config_path.read_text())
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        config["auths"]["https://index.docker.io/v1/"] = {"auth": token}
        config_path.write_text(json.dumps(config))
        pull_and_check(engine, guarded, reference, image)
        assert pulled_through(guarded, image)
    finally:
        engine.docker("logout", host, check=False)
        engine.docker("logout", check=False)


def test_podman_login_to_a_guarded_mirror(
    tmp_path_factory: pytest.TempPathFactory, guarded: MirrorProcess, hub: Upstream
) -> None:
    podman = Podman(tmp_path_factory.mktemp("pauth"), guarded.url)
    image = hub.images["auth"]["list"]
    host = f"127.0.0.1:{guarded.port}"
    reference = f"{host}/{image.repository}:{image.tag}"
    plain = ("--tls-verify=false",)  # the mirror speaks HTTP
    policy = ("--signature-policy", str(podman.policy))
    try:
        refused = record("podman pull, not logged in", podman.podman("pull", *plain, *policy, reference, check=False))
        assert refused.endswith(f"reading manifest list in {host}/{image.repository}: unauthorized"), refused
        wrong = podman.podman("login", *plain, "-u", USER, "-p", "wrong", host, check=False)
        assert (
            record("podman login, wrong password", wrong) == f'Error: logging into "{host}": invalid username/password'
        )
        podman.podman("login", *plain, "-u", USER, "-p", PASSWORD, host)
        auths = json.loads((podman.root / "auth.json").read_text())["auths"]  # REGISTRY_AUTH_FILE
        assert base64.b64decode(auths[host]["auth"]).decode() == f"{USER}:{PASSWORD}"
        podman.podman("pull", *plain, *policy, reference)
        image_id = podman.podman("image", "inspect", "--format", "{{.Id}}", reference).stdout.strip()
        assert "sha256:" + image_id == config_digest(image)
        podman.podman("rmi", reference)
    finally:
        podman.stop()


# TLS with a private CA


@dataclass
class RemoteMirror(MirrorProcess):
    """A mirror listening on every address of this namespace, named by `host` in its URL."""

    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def write_config(self) -> Path:
        config = super().write_config()
        text = config.read_text().replace(f'listen = "127.0.0.1:{self.port}"', f'listen = "0.0.0.0:{self.port}"')
        config.write_text(text)
        return config


def private_ca(directory: Path, addresses: list[str]) -> tuple[Path, Path, Path]:
    """A test CA (ca.crt alone in `directory`/ca) and a server certificate for `addresses` signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mirror e2e test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mirror")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (directory / "ca").mkdir(parents=True)
    (directory / "server").mkdir()
    ca_path = directory / "ca" / "ca.crt"
    cert_path, key_path = directory / "server" / "mirror.crt", directory / "server" / "mirror.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    os.chmod(key_path, 0o600)
    return ca_path, cert_path, key_path


@pytest.fixture(scope="module")
def remote_address() -> Iterator[str]:
    """REMOTE on this namespace's lo (the namespace, and so the address, is scripts/e2e's own)."""
    run([tool("ip"), "address", "add", f"{REMOTE}/32", "dev", "lo"], timeout=10)
    try:
        yield REMOTE
    finally:
        run([tool("ip"), "address", "del", f"{REMOTE}/32", "dev", "lo"], timeout=10, check=False)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return private_ca(tmp_path_factory.mktemp("pki"), ["127.0.0.1", REMOTE])


@pytest.fixture(scope="module")
def tls_mirror(
    tmp_path_factory: pytest.TempPathFactory, hub: Upstream, pki: tuple[Path, Path, Path], remote_address: str
) -> Iterator[RemoteMirror]:
    _, cert, key = pki
    mirror = RemoteMirror(
        tmp_path_factory.mktemp("tls") / "m",
        {"docker.io": hub.registry.url},
        server_config=f'tls_cert = "{cert}"\ntls_key = "{key}"',
        scheme="https",
        host=remote_address,
    )
    mirror.start()
    try:
        yield mirror
    finally:
        mirror.stop()


def private_etc(path: str, private: Path) -> tuple[Path, str]:
    """A bind that makes `path` (say /etc/docker/certs.d) the private directory `private`, whichever of
    it or its parent exists on the host: a bind mount needs an existing target, and nothing is created."""
    if os.path.isdir(path):
        return private, path
    parent = os.path.dirname(path)
    assert os.path.isdir(parent), f"neither {path} nor {parent} exists"
    wrapper = private.parent / (private.name + "-parent")
    wrapper.mkdir()
    (wrapper / os.path.basename(path)).symlink_to(private)
    return wrapper, parent


def trust(certs_d: Path, host: str, ca: Path) -> None:
    (certs_d / host).mkdir(parents=True, exist_ok=True)
    shutil.copy(ca, certs_d / host / "ca.crt")


def test_docker_and_a_private_ca(
    tmp_path_factory: pytest.TempPathFactory, tls_mirror: RemoteMirror, hub: Upstream, pki: tuple[Path, Path, Path]
) -> None:
    ca, _, _ = pki
    root = tmp_path_factory.mktemp("dk-tls")
    certs_d = root / "certs.d"
    certs_d.mkdir()
    engine = DockerEngine(root / "engine", tls_mirror.url)  # registry-mirrors https://REMOTE:PORT, nothing insecure
    engine.binds.append(private_etc("/etc/docker/certs.d", certs_d))
    images = hub.images["tls"]
    host = f"{tls_mirror.host}:{tls_mirror.port}"
    by_name = f"{host}/{images['schema2'].repository}:{images['schema2'].tag}"
    via_mirrors = f"{images['oci'].repository.removeprefix('library/')}:{images['oci'].tag}"
    try:
        engine.start()
        assert "insecure-registries" not in json.loads((engine.root / "daemon.json").read_text())

        refused = record("docker pull by name, CA unknown", engine.docker("pull", by_name, check=False))
        assert "x509: certificate signed by unknown authority" in refused
        since = engine.log.stat().st_size
        refused = record(
            "docker pull via registry-mirrors, CA unknown", engine.docker("pull", via_mirrors, check=False)
        )
        assert "registry-1.docker.io" in refused and host not in refused, refused
        logged = daemon_said(engine, since, host)
        MESSAGES["dockerd log for that pull (CA unknown)"] = logged
        assert "x509: certificate signed by unknown authority" in logged, logged
        assert not pulled_through(tls_mirror, images["oci"])

        # On 127.0.0.1 the same certificate is not checked at all: Docker's default insecure 127.0.0.0/8.
        loopback = f"127.0.0.1:{tls_mirror.port}/{images['list'].repository}:{images['list'].tag}"
        engine.docker("pull", loopback)
        engine.docker("rmi", loopback)

        trust(certs_d, host, ca)  # no restart
        for reference, image in ((by_name, images["schema2"]), (via_mirrors, images["oci"])):
            engine.docker("pull", reference)
            try:
                image_id = engine.docker("image", "inspect", "--format", "{{.Id}}", reference).stdout.strip()
                assert image_id == config_digest(image)
            finally:
                engine.docker("rmi", reference, check=False)
            assert pulled_through(tls_mirror, image)
    finally:
        engine.stop()


def test_podman_and_a_private_ca(
    tmp_path_factory: pytest.TempPathFactory, tls_mirror: RemoteMirror, hub: Upstream, pki: tuple[Path, Path, Path]
) -> None:
    ca, _, _ = pki
    certs_d = tmp_path_factory.mktemp("podman-certs") / "certs.d"
    certs_d.mkdir()
    # podman refuses a runroot path longer than 50 characters: keep the root short.
    podman = Podman(
        tmp_path_factory.mktemp("ptls"), tls_mirror.url
    )  # registries.conf: docker.io mirrored at REMOTE:PORT, secure
    podman.binds.append(private_etc("/etc/containers/certs.d", certs_d))
    image = hub.images["tls"]["index"]
    host = f"{tls_mirror.host}:{tls_mirror.port}"
    by_name = f"{host}/{image.repository}:{image.tag}"
    via_mirror = f"docker.io/{image.repository}:{image.tag}"
    policy = ("--signature-policy", str(podman.policy))

    def check(reference: str) -> None:
        image_id = podman.podman("image", "inspect", "--format", "{{.Id}}", reference).stdout.strip()
        assert "sha256:" + image_id == config_digest(image)
        podman.podman("rmi", reference)

    try:
        refused = record("podman pull by name, CA unknown", podman.podman("pull", *policy, by_name, check=False))
        assert "x509: certificate signed by unknown authority" in refused
        record(
            "podman pull via registries.conf mirror, CA unknown",
            podman.podman("pull", *policy, via_mirror, check=False),
        )

        podman.podman("pull", *policy, "--cert-dir", str(ca.parent), by_name)
        check(by_name)

        trust(certs_d, host, ca)
        podman.podman("pull", *policy, via_mirror)
        check(via_mirror)
        podman.podman("pull", *policy, by_name)
        check(by_name)
    finally:
        podman.stop()
