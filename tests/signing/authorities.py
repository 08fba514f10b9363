"""Local stand-ins for Sigstore's authorities: a CA issuing Fulcio-shaped certificates, a Rekor key.

LocalCA's leaf certificates carry what Fulcio's do for an email identity: an empty subject, the
email as a critical rfc822Name SAN, digitalSignature, the codeSigning EKU, the OIDC issuer both as
1.3.6.1.4.1.57264.1.1 (raw bytes, v1, deprecated) and 1.3.6.1.4.1.57264.1.8 (a DER UTF8String,
v2), and ten minutes of validity. The root and the intermediate are P-384, as Fulcio's are.

LocalRekor signs entry timestamps (SETs) as Rekor does: ECDSA P-256 with SHA-256 over the
canonical JSON of {"body", "integratedTime", "logID", "logIndex"} (containers/image's
signature/internal/rekor_set.go verifies exactly this for the `dev.sigstore.cosign/bundle`
annotation; cosign's specs/SIGNATURE_SPEC.md names the fields).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from .keys import Key

OID_FULCIO_ISSUER_V1 = ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
OID_FULCIO_ISSUER_V2 = ObjectIdentifier("1.3.6.1.4.1.57264.1.8")
FULCIO_VALIDITY = datetime.timedelta(minutes=10)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def der_utf8_string(text: str) -> bytes:
    """ASN.1 DER UTF8String (tag 12): how Fulcio's v2 extensions hold their values."""
    value = text.encode()
    if len(value) < 0x80:
        return bytes([0x0C, len(value)]) + value
    length = len(value).to_bytes((len(value).bit_length() + 7) // 8, "big")
    return bytes([0x0C, 0x80 | len(length)]) + length + value


def _pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def _ca_certificate(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    path_length: int,
) -> x509.Certificate:
    now = _now()
    issuer_name, signing_key = (issuer[0].subject, issuer[1]) if issuer else (subject, key)
    authority = (issuer[1] if issuer else key).public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(authority), critical=False)
        .sign(signing_key, hashes.SHA384())
    )


@dataclass(frozen=True)
class LocalCA:
    """A root and an intermediate standing in for Fulcio; `issue` makes a signer's leaf."""

    root: x509.Certificate
    intermediate: x509.Certificate
    intermediate_key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(cls, name: str = "mirror-test") -> LocalCA:
        root_key = ec.generate_private_key(ec.SECP384R1())
        root = _ca_certificate(
            x509.Name(
                [x509.NameAttribute(NameOID.ORGANIZATION_NAME, name), x509.NameAttribute(NameOID.COMMON_NAME, "root")]
            ),
            root_key,
            None,
            path_length=1,
        )
        intermediate_key = ec.generate_private_key(ec.SECP384R1())
        intermediate = _ca_certificate(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
                    x509.NameAttribute(NameOID.COMMON_NAME, "intermediate"),
                ]
            ),
            intermediate_key,
            (root, root_key),
            path_length=0,
        )
        return cls(root, intermediate, intermediate_key)

    @property
    def root_pem(self) -> str:
        return _pem(self.root)

    @property
    def chain_pem(self) -> str:
        """The intermediate alone."""
        return _pem(self.intermediate)

    @property
    def full_chain_pem(self) -> str:
        """Intermediate then root: cosign's `dev.sigstore.cosign/chain` annotation (Fulcio's chain), and
        a trusted root's certificate authority for a verifier (a v0.3 bundle carries only the leaf)."""
        return self.chain_pem + self.root_pem

    def issue(
        self,
        key: Key,
        email: str,
        issuer: str,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
    ) -> str:
        """A Fulcio-shaped leaf certificate (PEM) for `key`'s public key."""
        start = not_before or _now()
        end = not_after or start + FULCIO_VALIDITY
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.intermediate.subject)
            .public_key(key.private.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.private.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.intermediate_key.public_key()), critical=False
            )
            # An empty subject makes the SAN critical (RFC 5280 4.2.1.6), as in Fulcio's certificates.
            .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=True)
            .add_extension(x509.UnrecognizedExtension(OID_FULCIO_ISSUER_V1, issuer.encode()), critical=False)
            .add_extension(x509.UnrecognizedExtension(OID_FULCIO_ISSUER_V2, der_utf8_string(issuer)), critical=False)
            .sign(self.intermediate_key, hashes.SHA384())
        )
        return _pem(certificate)


def canonical_json(value: Any) -> bytes:
    """RFC 8785 for what Rekor signs (ASCII strings and integers): sorted keys, no spaces."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def hashedrekord_body(signature_b64: str, payload: bytes, public_key_or_cert_pem: str) -> bytes:
    """Rekor's canonical hashedrekord 0.0.1 entry for a signature over `payload`."""
    body = {
        "apiVersion": "0.0.1",
        "kind": "hashedrekord",
        "spec": {
            "data": {"hash": {"algorithm": "sha256", "value": hashlib.sha256(payload).hexdigest()}},
            "signature": {
                "content": signature_b64,
                "publicKey": {"content": base64.b64encode(public_key_or_cert_pem.encode()).decode()},
            },
        },
    }
    return json.dumps(body, separators=(",", ":")).encode()


@dataclass
class LocalRekor:
    """A Rekor log's key; what it signs is built here, with nothing logged anywhere."""

    key: Key
    _indexes: itertools.count[int] = field(default_factory=lambda: itertools.count(4000))

    @classmethod
    def create(cls) -> LocalRekor:
        return cls(Key.generate("ecdsa-p256"))

    @property
    def public_pem(self) -> str:
        return self.key.public_pem

    @property
    def private_pem(self) -> str:
        return self.key.private_pem

    @property
    def log_id(self) -> str:
        """Hex SHA-256 of the log key's DER SubjectPublicKeyInfo."""
        return self.key.key_id

    def signed_entry_timestamp(self, payload: dict[str, Any]) -> bytes:
        """The SET over {"body", "integratedTime", "logID", "logIndex"}: ECDSA-SHA256, DER."""
        return self.key.sign(canonical_json(payload))

    def cosign_bundle(
        self,
        signature_b64: str,
        payload: bytes,
        public_key_or_cert_pem: str,
        integrated_time: int | None = None,
        log_index: int | None = None,
    ) -> dict[str, Any]:
        """The value of cosign's `dev.sigstore.cosign/bundle` annotation for a hashedrekord entry."""
        entry = {
            "body": base64.b64encode(hashedrekord_body(signature_b64, payload, public_key_or_cert_pem)).decode(),
            "integratedTime": int(_now().timestamp()) if integrated_time is None else integrated_time,
            "logIndex": next(self._indexes) if log_index is None else log_index,
            "logID": self.log_id,
        }
        set_b64 = base64.b64encode(self.signed_entry_timestamp(entry)).decode()
        return {"SignedEntryTimestamp": set_b64, "Payload": entry}
