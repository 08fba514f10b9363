"""Optional access control (htpasswd, bcrypt) for clients and admins, and TLS."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from support import Image, MirrorProcess, Registry
from tools import tool


def htpasswd(path: Path, users: dict[str, str]) -> Path:
    lines = [f"{user}:{bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=4)).decode()}" for user, pw in users.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def guarded(tmp_path: Path, registry: Registry, images: dict[str, Image]) -> Iterator[MirrorProcess]:
    clients = htpasswd(tmp_path / "clients.htpasswd", {"ci": "pull-secret"})
    admins = htpasswd(tmp_path / "admins.htpasswd", {"ops": "admin-secret"})
    config = f'[auth]\nhtpasswd = "{clients}"\nadmin_htpasswd = "{admins}"\n'
    process = MirrorProcess(
        tmp_path / "m", {"docker.io": registry.url}, extra_config=config, admin=("ops", "admin-secret")
    ).start()
    try:
        yield process
    finally:
        process.stop()


def test_clients_must_log_in(guarded: MirrorProcess, images: dict[str, Image], tmp_path: Path) -> None:
    anonymous = httpx.get(f"{guarded.url}/v2/")
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == 'Basic realm="mirror"'
    assert anonymous.json()["errors"][0]["code"] == "UNAUTHORIZED"
    assert httpx.get(f"{guarded.url}/v2/", auth=("ci", "wrong")).status_code == 401
    assert httpx.get(f"{guarded.url}/v2/", auth=("nobody", "pull-secret")).status_code == 401
    assert httpx.get(f"{guarded.url}/v2/", auth=("ci", "pull-secret")).status_code == 200
    blob = next(iter(images["demo"].blobs))
    assert httpx.get(f"{guarded.url}/v2/library/demo/blobs/{blob}").status_code == 401

    source = f"docker://127.0.0.1:{guarded.port}/library/demo:latest"
    command = [tool("skopeo"), "copy", "--src-tls-verify=false", source, f"dir:{tmp_path / 'out'}"]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0
    allowed = subprocess.run(
        [*command[:2], "--src-creds", "ci:pull-secret", *command[2:]], capture_output=True, text=True, timeout=60
    )
    assert allowed.returncode == 0, allowed.stderr


def test_a_warm_manifest_still_needs_the_credential(guarded: MirrorProcess, images: dict[str, Image]) -> None:
    # Warm manifests skip the app when clients need no credential; here they must not.
    url = f"{guarded.url}/v2/library/demo/manifests/latest"
    accept = {"Accept": images["demo"].media_type}
    with httpx.Client(headers=accept) as client:
        for _ in range(3):
            assert client.get(url, auth=("ci", "pull-secret")).content == images["demo"].manifest
        for _ in range(3):
            assert client.get(url).status_code == 401
            assert client.get(url, auth=("ci", "wrong")).status_code == 401


def test_admin_pages_need_the_admin_credential(guarded: MirrorProcess) -> None:
    for path in ("/stats", "/metrics", "/api/images", "/v2/_catalog"):
        assert httpx.get(guarded.url + path).status_code == 401
        assert httpx.get(guarded.url + path, auth=("ci", "pull-secret")).status_code == 401
        assert httpx.get(guarded.url + path, auth=("ops", "admin-secret")).status_code == 200
    assert httpx.get(f"{guarded.url}/healthz").status_code == 200
    assert httpx.get(f"{guarded.url}/readyz").status_code == 200, "probes need no credential"


def test_a_non_bcrypt_htpasswd_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "md5.htpasswd"
    bad.write_text("user:$apr1$abcdefgh$0123456789abcdefghijkl\n")
    config = tmp_path / "c.toml"
    config.write_text(f'[auth]\nhtpasswd = "{bad}"\n')
    result = subprocess.run(
        [sys.executable, "-m", "mirror", "serve", "--config", str(config)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "auth.htpasswd" in result.stderr and "line 1" in result.stderr


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mirror test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    # The key stays out of the CA directory: clients read a *.key there as a client certificate's.
    cert_path, key_path = directory / "ca.crt", directory.parent / "mirror.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_tls(tmp_path: Path, registry: Registry, images: dict[str, Image]) -> None:
    cert, key = self_signed(tmp_path / "certs")
    process = MirrorProcess(
        tmp_path / "m",
        {"docker.io": registry.url},
        server_config=f'tls_cert = "{cert}"\ntls_key = "{key}"',
        scheme="https",
    ).start()
    try:
        assert httpx.get(f"{process.url}/v2/", verify=ssl.create_default_context(cafile=cert)).status_code == 200
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{process.url}/v2/")  # an unknown CA is refused, as clients refuse it
        result = subprocess.run(
            [
                tool("skopeo"),
                "copy",
                "--src-cert-dir",
                str(cert.parent),
                f"docker://127.0.0.1:{process.port}/library/demo:latest",
                f"dir:{tmp_path / 'out'}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
    finally:
        process.stop()
