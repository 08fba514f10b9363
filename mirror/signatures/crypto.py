"""Public keys and certificates: a signature checked with a key, a certificate chained to a CA.

The cryptography itself is the `cryptography` package's (OpenSSL); this module only decides
which check applies: ECDSA with the curve's hash (cosign signs P-256 with SHA-256), RSA
PKCS#1 v1.5 or PSS with SHA-256, Ed25519. A chain is built from the leaf to a certificate
of the policy's CA file, each link checked by signature, validity at the signing time,
and the issuer's CA rights; at most a few links.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID

MAX_CHAIN = 5  # links from a leaf to its anchor
ISSUER_V1 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1")  # Fulcio's OIDC issuer, raw bytes
ISSUER_V2 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8")  # the same, as a DER UTF8String


class MaterialError(ValueError):
    """A key, certificate or signature that cannot be read or does not check."""


def public_key(pem: bytes) -> PublicKeyTypes:
    """A PEM public key (or the key of a PEM certificate)."""
    try:
        if b"CERTIFICATE" in pem:
            return x509.load_pem_x509_certificate(pem).public_key()
        return serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise MaterialError(f"not a public key: {exc}") from None


def key_der(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(key: PublicKeyTypes) -> str:
    """The hex SHA-256 of the key's SubjectPublicKeyInfo: how a Rekor log is named."""
    return hashlib.sha256(key_der(key)).hexdigest()


def verifies(key: PublicKeyTypes, signature: bytes, data: bytes) -> bool:
    """True when `signature` is the key's signature of `data`."""
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(_curve_hash(key.curve)))
        elif isinstance(key, rsa.RSAPublicKey):
            return _rsa_verifies(key, signature, data)
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _curve_hash(curve: ec.EllipticCurve) -> hashes.HashAlgorithm:
    if isinstance(curve, ec.SECP384R1):
        return hashes.SHA384()
    if isinstance(curve, ec.SECP521R1):
        return hashes.SHA512()
    return hashes.SHA256()


def _rsa_verifies(key: rsa.RSAPublicKey, signature: bytes, data: bytes) -> bool:
    schemes: list[padding.AsymmetricPadding] = [
        padding.PKCS1v15(),
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO),
    ]
    for scheme in schemes:
        try:
            key.verify(signature, data, scheme, hashes.SHA256())
        except InvalidSignature:
            continue
        return True
    return False


def certificates(pem: bytes) -> list[x509.Certificate]:
    """Every certificate of a PEM text (a CA file, a chain); MaterialError when there is none or one is bad."""
    try:
        found = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise MaterialError(f"not PEM certificates: {exc}") from None
    return found


def certificate(data: bytes) -> x509.Certificate:
    """One certificate, PEM or DER."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise MaterialError(f"not a certificate: {exc}") from None


def chain_to(
    leaf: x509.Certificate, intermediates: list[x509.Certificate], anchors: list[x509.Certificate], at: datetime
) -> str | None:
    """None when `leaf` chains to one of `anchors` through `intermediates`, every certificate valid
    at `at`; else why not."""
    if not _valid_at(leaf, at):
        return f"the certificate was not valid at the signing time ({at:%Y-%m-%dT%H:%M:%SZ})"
    if not _code_signing(leaf):
        return "the certificate is not for code signing"
    current = leaf
    for _ in range(MAX_CHAIN):
        for anchor in anchors:
            if _issued_by(current, anchor):
                return None if _valid_at(anchor, at) else "the CA certificate was not valid at the signing time"
        issuer = next((c for c in intermediates if c != current and _issued_by(current, c)), None)
        if issuer is None or not _valid_at(issuer, at) or not _may_issue(issuer):
            return "the certificate does not chain to the policy's CA"
        current = issuer
    return "the certificate chain is too long"


def _issued_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    if certificate.issuer != issuer.subject:
        return False
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _valid_at(certificate: x509.Certificate, at: datetime) -> bool:
    return certificate.not_valid_before_utc <= at <= certificate.not_valid_after_utc


def _may_issue(certificate: x509.Certificate) -> bool:
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return constraints.ca


def _code_signing(certificate: x509.Certificate) -> bool:
    try:
        usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return True  # no EKU restricts nothing (RFC 5280)
    return ExtendedKeyUsageOID.CODE_SIGNING in usages


def emails(certificate: x509.Certificate) -> list[str]:
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return []
    return names.get_values_for_type(x509.RFC822Name)


def oidc_issuer(certificate: x509.Certificate) -> str | None:
    """Fulcio's issuer extension: the DER UTF8String one when present, else the raw one."""
    for oid in (ISSUER_V2, ISSUER_V1):
        try:
            value = certificate.extensions.get_extension_for_oid(oid).value
        except x509.ExtensionNotFound:
            continue
        raw = value.value if isinstance(value, x509.UnrecognizedExtension) else b""
        if oid == ISSUER_V2:
            raw = _utf8_string(raw)
        try:
            return raw.decode()
        except UnicodeDecodeError:
            return None
    return None


def _utf8_string(der: bytes) -> bytes:
    """The content of a DER UTF8String (tag 12, short or long length)."""
    if len(der) < 2 or der[0] != 0x0C:
        return b""
    length, start = der[1], 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 2 or len(der) < 2 + count:
            return b""
        length, start = int.from_bytes(der[2 : 2 + count], "big"), 2 + count
    return der[start : start + length] if len(der) == start + length else b""


def utc(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
