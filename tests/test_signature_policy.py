"""containers-policy.json read as containers/image reads it: the scope that applies, strict fields,
and every requirement the mirror cannot check refused by name (never silently accepted)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mirror.signatures.policy import PolicyError, load_policy, namespaces, parse_policy

KEY = (
    b"-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEZASEjixPmV/wIz6Hzmgns3tvqy7q\n"
    b"RJYTaoo2ZgHrqgmWet8z8+oEcszoj/mzMPBNIeNZC513URFr4CYa9b0Yrg==\n-----END PUBLIC KEY-----\n"
)


def ca_pem() -> bytes:
    """A self-signed CA certificate: what fulcio.caData holds."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


ACCEPT = [{"type": "insecureAcceptAnything"}]


def policy(tmp_path: Path, docker: dict[str, Any], default: list[Any] | None = None) -> Any:
    (tmp_path / "cosign.pub").write_bytes(KEY)
    data = {"default": default or ACCEPT, "transports": {"docker": docker}}
    return parse_policy(json.dumps(data), "policy.json")


def signed(tmp_path: Path, **more: Any) -> dict[str, Any]:
    return {"type": "sigstoreSigned", "keyPath": str(tmp_path / "cosign.pub"), **more}


def test_the_most_specific_scope_wins_in_containers_image_order(tmp_path: Path) -> None:
    assert namespaces("docker.io/library/busybox") == [
        "docker.io/library/busybox",
        "docker.io/library",
        "docker.io",
        "*.io",
    ]
    assert namespaces("registry.example.com:5000/ns/app")[-3:] == [
        "registry.example.com:5000",
        "*.example.com",
        "*.com",
    ]
    scopes = {
        "docker.io/team/app:v1": [{"type": "reject"}],
        "docker.io/team": [signed(tmp_path)],
        "*.example.com": [{"type": "reject"}],
        "": ACCEPT,
    }
    found = policy(tmp_path, scopes, default=[{"type": "reject"}])
    assert found.requirements_for("docker.io/team/app", "v1")[0] == "docker.io/team/app:v1"
    assert found.requirements_for("docker.io/team/app", "v2")[0] == "docker.io/team"
    assert found.requirements_for("docker.io/team/app", "sha256:" + "a" * 64)[0] == "docker.io/team"
    scope, requirements = found.requirements_for("docker.io/team/sub/app", "v1")
    assert scope == "docker.io/team" and requirements[0].keys == (KEY,)
    assert requirements[0].identity.type == "matchRepoDigestOrExact"  # the default
    assert found.requirements_for("ghcr.example.com/org/app", "1")[0] == "*.example.com"
    assert found.requirements_for("docker.io/library/alpine", "3.19")[0] == ""  # the transport's default
    without = policy(tmp_path, {"docker.io/team": [signed(tmp_path)]}, default=[{"type": "reject"}])
    assert without.requirements_for("quay.io/x/y", "1") == ("default", without.default)


def test_keyless_and_rekor_and_identities_are_read(tmp_path: Path) -> None:
    data = base64.b64encode(KEY).decode()
    requirement = {
        "type": "sigstoreSigned",
        "fulcio": {
            "caData": base64.b64encode(ca_pem()).decode(),
            "oidcIssuer": "https://issuer.example",
            "subjectEmail": "ci@example.com",
        },
        "rekorPublicKeyData": data,
        "signedIdentity": {"type": "remapIdentity", "prefix": "mirror.lan/team", "signedPrefix": "docker.io/team"},
    }
    _, (found,) = policy(tmp_path, {"docker.io/team": [requirement]}).requirements_for("docker.io/team/a", "1")
    assert found.fulcio is not None and found.fulcio.subject_email == "ci@example.com" and found.rekor_keys == (KEY,)
    assert (found.identity.prefix, found.identity.signed_prefix) == ("mirror.lan/team", "docker.io/team")
    exact = signed(tmp_path, signedIdentity={"type": "exactReference", "dockerReference": "docker.io/team/app:v1"})
    assert policy(tmp_path, {"docker.io": [exact]}).scopes["docker.io"][0].identity.docker_reference


@pytest.mark.parametrize(
    ("requirement", "message"),
    [
        ({"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/k.gpg"}, "GPG signatures (signedBy)"),
        ({"type": "signedBaseLayer", "baseLayerIdentity": {"type": "matchExact"}}, "signedBaseLayer"),
        ({"type": "sigstoreSigned", "pki": {}}, "pki"),
        ({"type": "sigstoreSigned"}, "exactly one of keyPath"),
        ({"type": "sigstoreSigned", "keyPath": "/nonexistent/cosign.pub"}, "cannot read /nonexistent/cosign.pub"),
        ({"type": "sigstoreSigned", "keyPath": "relative.pub"}, "not an absolute path"),
        ({"type": "sigstoreSigned", "keyData": "not base64!"}, "not base64"),
        ({"type": "sigstoreSigned", "keyData": base64.b64encode(b"junk").decode()}, "not a PEM public key"),
        ({"type": "sigstoreSigned", "keyData": base64.b64encode(KEY).decode(), "extra": 1}, "unknown field 'extra'"),
        ({"type": "insecureAcceptAnything", "keyPath": "/x"}, "unknown field 'keyPath'"),
        ({"type": "whatever"}, "unknown requirement type 'whatever'"),
        (
            {
                "type": "sigstoreSigned",
                "fulcio": {"caData": base64.b64encode(ca_pem()).decode(), "oidcIssuer": "i", "subjectEmail": "e"},
            },
            "fulcio needs rekorPublicKeyPath",
        ),
        (
            {
                "type": "sigstoreSigned",
                "fulcio": {"caData": base64.b64encode(KEY).decode(), "oidcIssuer": "i", "subjectEmail": "e"},
                "rekorPublicKeyData": base64.b64encode(KEY).decode(),
            },
            "not a CA certificate",
        ),
        (
            {"type": "sigstoreSigned", "keyData": base64.b64encode(KEY.replace(b"Zg", b"Zh")).decode()},
            "not a public key",
        ),
        (
            {
                "type": "sigstoreSigned",
                "keyData": base64.b64encode(KEY).decode(),
                "signedIdentity": {"type": "matchSomething"},
            },
            "unknown signedIdentity type",
        ),
    ],
)
def test_what_cannot_be_checked_is_refused_by_name(tmp_path: Path, requirement: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError) as raised:
        policy(tmp_path, {"docker.io/team": [requirement]})
    assert 'transports.docker."docker.io/team"[0]' in str(raised.value) and message in str(raised.value)


def test_the_file_is_read_strictly(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    path.write_text('{"default": [{"type": "reject"}], "default": [{"type": "insecureAcceptAnything"}]}')
    with pytest.raises(PolicyError, match="duplicated field 'default'"):
        load_policy(path)
    for text, message in [
        ('{"transports": {}}', "default: missing"),
        ('{"default": []}', "non-empty list"),
        ('{"default": [{"type": "reject"}], "other": 1}', "unknown field 'other'"),
        ('{"default": [{"type": "reject"}], "transports": {"docker": {"busybox": [{"type": "reject"}]}}}', "scope"),
        ("not json", "not JSON"),
    ]:
        with pytest.raises(PolicyError, match=message):
            parse_policy(text)
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "missing.json")
    # Other transports' sections are read for their shape only: podman's own policy file works here.
    shared = {"default": [{"type": "reject"}], "transports": {"docker-daemon": {"": ACCEPT}}}
    assert parse_policy(json.dumps(shared)).scopes == {}
