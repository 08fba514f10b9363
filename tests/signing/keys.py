"""Signing keys as cosign makes and stores them: ECDSA P-256 (its default), RSA 2048, Ed25519.

`write_cosign_key` writes the password-encrypted private key file `cosign generate-key-pair`
writes (sigstore's pkg/cryptoutils over go-securesystemslib's `encrypted` package): a PEM block of
type ENCRYPTED SIGSTORE PRIVATE KEY whose bytes are JSON naming scrypt (N=2^16, r=8, p=1, a 32-byte
salt) for the key and nacl/secretbox (a 24-byte nonce) for the cipher, around the PKCS#8 DER key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from nacl.secret import SecretBox

KeyKind = Literal["ecdsa-p256", "rsa-2048", "ed25519"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

COSIGN_KEY_PEM_TYPE = "ENCRYPTED SIGSTORE PRIVATE KEY"
_LEGACY_COSIGN_KEY_PEM_TYPE = "ENCRYPTED COSIGN PRIVATE KEY"  # older cosign; still read
# The scrypt strengths go-securesystemslib accepts (legacy, standard, OWASP); it writes standard.
_SCRYPT_ACCEPTED = ({"N": 32768, "r": 8, "p": 1}, {"N": 65536, "r": 8, "p": 1}, {"N": 131072, "r": 8, "p": 1})
_SCRYPT_WRITTEN = _SCRYPT_ACCEPTED[1]


class CosignKeyError(ValueError):
    """An encrypted cosign key file that cannot be read: wrong password, format or parameters."""


@dataclass(frozen=True)
class Key:
    """A private key and what a signer hands out of it."""

    private: PrivateKey

    @classmethod
    def generate(cls, kind: KeyKind = "ecdsa-p256") -> Key:
        if kind == "ecdsa-p256":
            return cls(ec.generate_private_key(ec.SECP256R1()))
        if kind == "rsa-2048":
            return cls(rsa.generate_private_key(public_exponent=65537, key_size=2048))
        if kind == "ed25519":
            return cls(ed25519.Ed25519PrivateKey.generate())
        raise ValueError(f"unknown key kind {kind!r}")

    @classmethod
    def from_pem(cls, pem: str | bytes) -> Key:
        loaded = serialization.load_pem_private_key(pem.encode() if isinstance(pem, str) else pem, password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
            raise ValueError(f"unsupported key type {type(loaded).__name__}")
        return cls(loaded)

    @property
    def kind(self) -> KeyKind:
        if isinstance(self.private, ec.EllipticCurvePrivateKey):
            return "ecdsa-p256"
        return "rsa-2048" if isinstance(self.private, rsa.RSAPrivateKey) else "ed25519"

    @property
    def private_pem(self) -> str:
        """PKCS#8, unencrypted."""
        return pem_block("PRIVATE KEY", self.private_der)

    @property
    def private_der(self) -> bytes:
        return self.private.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @property
    def public_der(self) -> bytes:
        """The DER SubjectPublicKeyInfo."""
        return self.private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @property
    def public_pem(self) -> str:
        """PKIX (`-----BEGIN PUBLIC KEY-----`), as cosign.pub holds it."""
        return (
            self.private.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )

    @property
    def key_id(self) -> str:
        """Hex SHA-256 of the DER SubjectPublicKeyInfo (a Rekor log ID is this of the log's key)."""
        return hashlib.sha256(self.public_der).hexdigest()

    def sign(self, data: bytes) -> bytes:
        """ECDSA-SHA256 (DER), RSA PKCS#1 v1.5 with SHA-256, or Ed25519: what cosign signs with."""
        if isinstance(self.private, ec.EllipticCurvePrivateKey):
            return self.private.sign(data, ec.ECDSA(hashes.SHA256()))
        if isinstance(self.private, rsa.RSAPrivateKey):
            return self.private.sign(data, padding.PKCS1v15(), hashes.SHA256())
        return self.private.sign(data)

    def verify(self, signature: bytes, data: bytes) -> bool:
        public = self.private.public_key()
        try:
            if isinstance(public, ec.EllipticCurvePublicKey):
                public.verify(signature, data, ec.ECDSA(hashes.SHA256()))
            elif isinstance(public, rsa.RSAPublicKey):
                public.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
            else:
                public.verify(signature, data)
        except InvalidSignature:
            return False
        return True

    def write_public(self, path: Path) -> Path:
        path.write_text(self.public_pem)
        return path

    def write_cosign_key(self, path: Path, password: str | bytes) -> Path:
        """The encrypted private key file `cosign generate-key-pair` writes (cosign.key)."""
        path.write_text(encrypt_cosign_key(self.private_der, password))
        return path

    @classmethod
    def read_cosign_key(cls, path: Path, password: str | bytes) -> Key:
        der = decrypt_cosign_key(path.read_text(), password)
        loaded = serialization.load_der_private_key(der, password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
            raise CosignKeyError(f"unsupported key type {type(loaded).__name__}")
        return cls(loaded)


def _secretbox_key(password: bytes, salt: bytes, params: dict[str, int]) -> bytes:
    return Scrypt(salt=salt, length=SecretBox.KEY_SIZE, n=params["N"], r=params["r"], p=params["p"]).derive(password)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def pem_block(pem_type: str, der: bytes) -> str:
    """A PEM block with 64-character lines, as Go's encoding/pem writes it."""
    body = _b64(der)
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return f"-----BEGIN {pem_type}-----\n" + "\n".join(lines) + f"\n-----END {pem_type}-----\n"


def encrypt_cosign_key(plaintext: bytes, password: str | bytes) -> str:
    """go-securesystemslib's encrypted.Encrypt (standard scrypt strength), PEM-wrapped as cosign does."""
    secret = password.encode() if isinstance(password, str) else password
    salt, nonce = os.urandom(32), os.urandom(SecretBox.NONCE_SIZE)
    ciphertext = SecretBox(_secretbox_key(secret, salt, _SCRYPT_WRITTEN)).encrypt(plaintext, nonce).ciphertext
    # Go's json.Marshal of the struct: fields in declaration order, no spaces, []byte as base64.
    document = {
        "kdf": {"name": "scrypt", "params": _SCRYPT_WRITTEN, "salt": _b64(salt)},
        "cipher": {"name": "nacl/secretbox", "nonce": _b64(nonce)},
        "ciphertext": _b64(ciphertext),
    }
    return pem_block(COSIGN_KEY_PEM_TYPE, json.dumps(document, separators=(",", ":")).encode())


_PEM_RE = re.compile(r"-----BEGIN ([A-Z ]+)-----\s*(.*?)\s*-----END \1-----", re.S)


def decrypt_cosign_key(pem: str, password: str | bytes) -> bytes:
    """The PKCS#8 DER inside an encrypted cosign key file, read as sigstore's cryptoutils reads it."""
    match = _PEM_RE.search(pem)
    if match is None or match[1] not in (COSIGN_KEY_PEM_TYPE, _LEGACY_COSIGN_KEY_PEM_TYPE):
        raise CosignKeyError("not an encrypted cosign private key")
    try:
        document = json.loads(base64.b64decode(match[2]))
        kdf, cipher = document["kdf"], document["cipher"]
        if kdf["name"] != "scrypt" or cipher["name"] != "nacl/secretbox":
            raise CosignKeyError(f"unknown kdf {kdf['name']!r} or cipher {cipher['name']!r}")
        if kdf["params"] not in _SCRYPT_ACCEPTED:
            raise CosignKeyError(f"unsupported scrypt parameters {kdf['params']}")
        secret = password.encode() if isinstance(password, str) else password
        key = _secretbox_key(secret, base64.b64decode(kdf["salt"]), kdf["params"])
        return SecretBox(key).decrypt(base64.b64decode(document["ciphertext"]), base64.b64decode(cipher["nonce"]))
    except CosignKeyError:
        raise
    except Exception as exc:  # nacl's CryptoError for a wrong password, KeyError/ValueError for a bad file
        raise CosignKeyError(f"cannot decrypt the cosign key: {type(exc).__name__}: {exc}") from exc
