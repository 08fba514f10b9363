"""containers-policy.json(5), as podman, skopeo and CRI-O read it: which requirements apply to an image.

Only the `docker` transport's scopes and the global `default` matter to a registry mirror;
other transports' sections are read for their shape and otherwise left to the clients that
use them. Parsing is as strict as containers/image's: an unknown or duplicated field, or a
requirement this mirror cannot check (`signedBy` with GPG keys, `signedBaseLayer`, `pki`),
is an error naming it, never a requirement silently accepted.

The most specific scope wins, in containers/image's order for `docker.io/library/busybox:1`:
the reference itself, `docker.io/library/busybox`, `docker.io/library`, `docker.io`, `*.io`,
then the transport's `""` scope, then `default`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Scopes of the docker transport: a fully expanded name (host first) with an optional tag or
# digest, a namespace or host, or `*.` and a domain.
_HOST = r"(?:localhost|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+|\[[0-9A-Fa-f:]+\])(?::[0-9]+)?"
_PATH = r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
_SCOPE = re.compile(rf"{_HOST}{_PATH}(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}|@sha256:[0-9a-f]{{64}})?")
_WILDCARD = re.compile(r"\*\.[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")

UNSUPPORTED = {
    "signedBy": "GPG signatures (signedBy) are not checked by this mirror: use sigstoreSigned",
    "signedBaseLayer": "signedBaseLayer is not checked by this mirror",
}


class PolicyError(ValueError):
    """The policy file cannot be used; the message names the place (`transports.docker."scope"[0]`)."""


@dataclass(frozen=True)
class SignedIdentity:
    """Which identity a signature must claim, relative to the image's own name."""

    # matchRepoDigestOrExact (the default), matchExact, matchRepository, exactReference,
    # exactRepository or remapIdentity
    type: str
    docker_reference: str | None = None  # exactReference
    docker_repository: str | None = None  # exactRepository
    prefix: str | None = None  # remapIdentity
    signed_prefix: str | None = None


@dataclass(frozen=True)
class Fulcio:
    """A keyless signature: a certificate chained to this CA, for this issuer and email."""

    ca_pem: bytes
    oidc_issuer: str
    subject_email: str


@dataclass(frozen=True)
class Requirement:
    """One requirement of a scope; every one of a scope's requirements must hold."""

    type: str  # insecureAcceptAnything, reject or sigstoreSigned
    keys: tuple[bytes, ...] = ()  # PEM public keys (sigstoreSigned with keys)
    fulcio: Fulcio | None = None
    rekor_keys: tuple[bytes, ...] = ()  # PEM public keys of the Rekor logs whose timestamps count
    identity: SignedIdentity = SignedIdentity("matchRepoDigestOrExact")
    source: str = ""  # what it trusts, for messages: the key file, "keyData", or the CA and email

    def __str__(self) -> str:
        return self.type if self.type != "sigstoreSigned" else self.source


@dataclass(frozen=True)
class Policy:
    default: tuple[Requirement, ...]
    scopes: dict[str, tuple[Requirement, ...]]  # the docker transport's, "" its default
    source: str = "policy"  # the file it was read from

    def __str__(self) -> str:
        return self.source

    @property
    def accepts_anything(self) -> bool:
        """True when no requirement of any scope asks for more than insecureAcceptAnything."""
        every = [self.default, *self.scopes.values()]
        return all(r.type == "insecureAcceptAnything" for requirements in every for r in requirements)

    def repository_accepts_anything(self, name: str) -> bool:
        """True when every scope that may apply to the repository `name`, whatever the tag or digest,
        accepts anything (so its blobs need no accepted manifest)."""
        tagged = [r for scope, r in self.scopes.items() if scope.startswith((f"{name}:", f"{name}@"))]
        _, requirements = self.requirements_for(name, "latest")
        every = [requirements, *tagged]
        return all(r.type == "insecureAcceptAnything" for requirements in every for r in requirements)

    def requirements_for(self, name: str, reference: str) -> tuple[str, tuple[Requirement, ...]]:
        """The scope that applies to `name` (`docker.io/library/alpine`) at a tag or digest, and its
        requirements; the scope is "default" when only the global default applies."""
        joiner = "@" if reference.startswith("sha256:") else ":"
        for scope in [f"{name}{joiner}{reference}", *namespaces(name), ""]:
            if scope in self.scopes:
                return scope, self.scopes[scope]
        return "default", self.default


def namespaces(name: str) -> list[str]:
    """The name, its parent namespaces up to the host, then `*.` and each parent domain of the host."""
    found = []
    while True:
        found.append(name)
        if "/" not in name:
            break
        name = name.rsplit("/", 1)[0]
    host = name.split(":", 1)[0] if not name.startswith("[") else name
    while "." in host:
        host = host.split(".", 1)[1]
        found.append(f"*.{host}")
    return found


def load_policy(path: Path) -> Policy:
    """The policy in `path`, checked whole; a PolicyError says what is wrong and where."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_policy(text, str(path))


def parse_policy(text: str, source: str = "policy") -> Policy:
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates)
    except ValueError as exc:
        raise PolicyError(f"{source}: not JSON: {exc}") from None
    root = _table(data, source, {"default", "transports"})
    if "default" not in root:
        raise PolicyError(f"{source}: default: missing (the requirements for every image no scope names)")
    default = _requirements(root["default"], f"{source}: default")
    transports = _table(root.get("transports", {}), f"{source}: transports", None)
    scopes: dict[str, tuple[Requirement, ...]] = {}
    for transport, entries in transports.items():
        where = f"{source}: transports.{transport}"
        table = _table(entries, where, None)
        for scope, requirements in table.items():
            place = f'{where}."{scope}"'
            parsed = _requirements(requirements, place)
            if transport == "docker":
                if scope and not (_SCOPE.fullmatch(scope) or _WILDCARD.fullmatch(scope)):
                    raise PolicyError(
                        f"{place}: not a docker scope: a full name (docker.io/library/alpine[:tag]), "
                        "a namespace, a host, or *.domain"
                    )
                scopes[scope] = parsed
    return Policy(default, scopes, source)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise ValueError(f"duplicated field {key!r}")
        found[key] = value
    return found


def _table(value: object, where: str, allowed: set[str] | None) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PolicyError(f"{where}: expected a JSON object")
    if allowed is not None and (unknown := sorted(set(value) - allowed)):
        raise PolicyError(f"{where}: unknown field {unknown[0]!r}")
    return value


def _requirements(value: object, where: str) -> tuple[Requirement, ...]:
    if not isinstance(value, list) or not value:
        raise PolicyError(f"{where}: expected a non-empty list of requirements")
    return tuple(_requirement(item, f"{where}[{number}]") for number, item in enumerate(value))


def _requirement(value: object, where: str) -> Requirement:
    table = _table(value, where, None)
    kind = table.get("type")
    if kind in UNSUPPORTED:
        raise PolicyError(f"{where}: {UNSUPPORTED[kind]}")
    if kind in ("insecureAcceptAnything", "reject"):
        _table(table, where, {"type"})
        return Requirement(kind)
    if kind != "sigstoreSigned":
        raise PolicyError(f"{where}: unknown requirement type {kind!r}")
    fields = {"type", "keyPath", "keyPaths", "keyData", "keyDatas", "fulcio", "pki", "signedIdentity"}
    fields |= {"rekorPublicKeyPath", "rekorPublicKeyPaths", "rekorPublicKeyData", "rekorPublicKeyDatas"}
    _table(table, where, fields)
    if "pki" in table:
        raise PolicyError(f"{where}: pki (certificates from your own CA without Fulcio) is not checked by this mirror")
    sources = [key for key in ("keyPath", "keyPaths", "keyData", "keyDatas", "fulcio") if key in table]
    if len(sources) != 1:
        raise PolicyError(f"{where}: exactly one of keyPath, keyPaths, keyData, keyDatas or fulcio, got {sources}")
    keys = _keys(table, where, "keyPath", "keyPaths", "keyData", "keyDatas")
    rekor = _keys(
        table, where, "rekorPublicKeyPath", "rekorPublicKeyPaths", "rekorPublicKeyData", "rekorPublicKeyDatas"
    )
    fulcio = _fulcio(table["fulcio"], f"{where}.fulcio") if "fulcio" in table else None
    if fulcio is not None and not rekor:
        raise PolicyError(f"{where}: fulcio needs rekorPublicKeyPath or rekorPublicKeyData (the signing time)")
    identity = _identity(table.get("signedIdentity"), f"{where}.signedIdentity")
    return Requirement("sigstoreSigned", keys, fulcio, rekor, identity, _source(table, fulcio))


def _source(table: dict[str, Any], fulcio: Fulcio | None) -> str:
    """What a requirement trusts, as a message names it: the key file(s), or the CA and identity."""
    if fulcio is not None:
        ca = table["fulcio"].get("caPath", "the fulcio.caData CA")
        return f"a certificate from {ca} for {fulcio.subject_email} (issuer {fulcio.oidc_issuer})"
    if "keyPath" in table:
        return str(table["keyPath"])
    if "keyPaths" in table:
        return " or ".join(table["keyPaths"])
    return "the policy's keyData"


def _keys(table: dict[str, Any], where: str, path: str, paths: str, data: str, datas: str) -> tuple[bytes, ...]:
    """PEM public keys from one path, several paths, one base64 value or several; () when none is given."""
    given = [key for key in (path, paths, data, datas) if key in table]
    if len(given) > 1:
        raise PolicyError(f"{where}: {given[0]} and {given[1]} together")
    if not given:
        return ()
    key = given[0]
    values = table[key] if key in (paths, datas) else [table[key]]
    if not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
        raise PolicyError(f"{where}.{key}: expected {'a list of strings' if key in (paths, datas) else 'a string'}")
    if key in (path, paths):
        return tuple(_pem_file(Path(value), f"{where}.{key}") for value in values)
    return tuple(_pem_data(value, f"{where}.{key}") for value in values)


def _pem_file(path: Path, where: str) -> bytes:
    if not path.is_absolute():
        raise PolicyError(f"{where}: {path} is not an absolute path")
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise PolicyError(f"{where}: cannot read {path}: {exc.strerror}") from None
    return _pem(pem, f"{where} ({path})")


def _pem_data(value: str, where: str) -> bytes:
    try:
        pem = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise PolicyError(f"{where}: not base64") from None
    return _pem(pem, where)


def _pem(pem: bytes, where: str) -> bytes:
    if b"-----BEGIN PUBLIC KEY-----" not in pem and b"-----BEGIN CERTIFICATE-----" not in pem:
        raise PolicyError(f"{where}: not a PEM public key or certificate")
    from mirror.signatures.crypto import MaterialError, certificates, public_key  # only with a policy: heavy

    try:
        if b"-----BEGIN CERTIFICATE-----" in pem:
            certificates(pem)
        else:
            public_key(pem)
    except MaterialError as exc:
        raise PolicyError(f"{where}: {exc}") from None
    return pem


def _fulcio(value: object, where: str) -> Fulcio:
    table = _table(value, where, {"caPath", "caData", "oidcIssuer", "subjectEmail"})
    ca = _keys(table, where, "caPath", "caPaths", "caData", "caDatas")
    if len(ca) != 1:
        raise PolicyError(f"{where}: one of caPath or caData")
    if b"-----BEGIN CERTIFICATE-----" not in ca[0]:
        raise PolicyError(f"{where}: not a CA certificate (PEM): the certificates Fulcio issues chain to it")
    issuer, email = table.get("oidcIssuer"), table.get("subjectEmail")
    if not isinstance(issuer, str) or not issuer or not isinstance(email, str) or not email:
        raise PolicyError(f"{where}: oidcIssuer and subjectEmail are both required")
    return Fulcio(ca[0], issuer, email)


def _identity(value: object, where: str) -> SignedIdentity:
    if value is None:
        return SignedIdentity("matchRepoDigestOrExact")
    table = _table(value, where, None)
    kind = table.get("type")
    if kind in ("matchExact", "matchRepoDigestOrExact", "matchRepository"):
        _table(table, where, {"type"})
        return SignedIdentity(kind)
    if kind == "exactReference":
        _table(table, where, {"type", "dockerReference"})
        reference = table.get("dockerReference")
        if not isinstance(reference, str) or not _SCOPE.fullmatch(reference) or not re.search(r"[:@][^/]+$", reference):
            raise PolicyError(f"{where}.dockerReference: expected a full reference with a tag or digest")
        return SignedIdentity(kind, docker_reference=reference)
    if kind == "exactRepository":
        _table(table, where, {"type", "dockerRepository"})
        repository = table.get("dockerRepository")
        if not isinstance(repository, str) or not re.fullmatch(f"{_HOST}{_PATH}", repository):
            raise PolicyError(f"{where}.dockerRepository: expected a full repository name")
        return SignedIdentity(kind, docker_repository=repository)
    if kind == "remapIdentity":
        _table(table, where, {"type", "prefix", "signedPrefix"})
        prefix, signed = table.get("prefix"), table.get("signedPrefix")
        for key, text in (("prefix", prefix), ("signedPrefix", signed)):
            if not isinstance(text, str) or not (_SCOPE.fullmatch(text) or _WILDCARD.fullmatch(text)):
                raise PolicyError(f"{where}.{key}: expected a host, namespace or repository")
        return SignedIdentity(kind, prefix=prefix, signed_prefix=signed)
    raise PolicyError(f"{where}: unknown signedIdentity type {kind!r}")
