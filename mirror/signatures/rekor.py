"""A transparency log's promise, checked offline: the signed entry timestamp (SET) of a Rekor log
whose key the policy names, over an entry that records this very signature.

The SET is the log's signature of the canonical JSON `{"body","integratedTime","logID","logIndex"}`
(cosign's `dev.sigstore.cosign/bundle` annotation and a Sigstore bundle's `inclusionPromise`
carry the same). The body must be the signature being checked: its hash of the signed bytes,
its signature and its key or certificate (kinds hashedrekord, dsse and intoto).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from mirror.signatures.crypto import MaterialError, key_der, key_id, public_key, verifies

MAX_BODY = 256 * 1024


@dataclass(frozen=True)
class LogEntry:
    body: str  # base64, as the log returned it
    integrated_time: int
    log_index: int
    log_id: str  # hex: SHA-256 of the log key's SubjectPublicKeyInfo
    promise: bytes  # the SET


@dataclass(frozen=True)
class Signed:
    """What the log entry must record: the signature, its key (as DER), and what was signed."""

    signature: bytes
    key: bytes  # SubjectPublicKeyInfo DER of the key that made the signature
    data: bytes  # the bytes signed (hashedrekord), or the DSSE payload (dsse, intoto)


def check_entry(entry: LogEntry, logs: tuple[PublicKeyTypes, ...], signed: Signed) -> str | None:
    """None when a log of `logs` promised this entry and the entry records `signed`; else why not."""
    log = next((key for key in logs if key_id(key) == entry.log_id), None)
    if log is None:
        return "the transparency log entry is from a log the policy does not trust"
    canonical = json.dumps(
        {
            "body": entry.body,
            "integratedTime": entry.integrated_time,
            "logID": entry.log_id,
            "logIndex": entry.log_index,
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    if not verifies(log, entry.promise, canonical):
        return "the transparency log's signed entry timestamp does not verify"
    return _body_records(entry.body, signed)


def _body_records(body_b64: str, signed: Signed) -> str | None:
    try:
        body = json.loads(base64.b64decode(body_b64, validate=True))
    except (ValueError, binascii.Error):
        return "the transparency log entry's body is not readable"
    if not isinstance(body, dict) or not isinstance(body.get("spec"), dict):
        return "the transparency log entry's body is not readable"
    kind, spec = body.get("kind"), body["spec"]
    try:
        if kind == "hashedrekord":
            ok = _hashedrekord(spec, signed)
        elif kind == "dsse":
            ok = _dsse(spec, signed)
        elif kind == "intoto":
            ok = _intoto(spec, signed)
        else:
            return f"the transparency log entry is of kind {str(kind)[:40]!r}, which this mirror does not read"
    except (KeyError, TypeError, ValueError, binascii.Error, MaterialError):
        return "the transparency log entry's body is not readable"
    return None if ok else "the transparency log entry records another signature"


def _hashedrekord(spec: dict[str, Any], signed: Signed) -> bool:
    digest = spec["data"]["hash"]
    return (
        digest["algorithm"] == "sha256"
        and digest["value"] == hashlib.sha256(signed.data).hexdigest()
        and base64.b64decode(spec["signature"]["content"], validate=True) == signed.signature
        and _same_key(spec["signature"]["publicKey"]["content"], signed)
    )


def _dsse(spec: dict[str, Any], signed: Signed) -> bool:
    digest = spec["payloadHash"]
    if digest["algorithm"] != "sha256" or digest["value"] != hashlib.sha256(signed.data).hexdigest():
        return False
    return any(
        base64.b64decode(entry["signature"], validate=True) == signed.signature and _same_key(entry["verifier"], signed)
        for entry in spec["signatures"]
    )


def _intoto(spec: dict[str, Any], signed: Signed) -> bool:
    content = spec["content"]
    digest = content["payloadHash"]
    if digest["algorithm"] != "sha256" or digest["value"] != hashlib.sha256(signed.data).hexdigest():
        return False
    for entry in content["envelope"]["signatures"]:
        sig = base64.b64decode(entry["sig"], validate=True)  # intoto 0.0.2 encodes it twice
        if signed.signature in (sig, _b64_or_empty(sig)) and _same_key(entry["publicKey"], signed):
            return True
    return False


def _b64_or_empty(data: bytes) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (ValueError, binascii.Error):
        return b""


def _same_key(pem_b64: str, signed: Signed) -> bool:
    pem = base64.b64decode(pem_b64, validate=True)
    return len(pem) <= MAX_BODY and key_der(public_key(pem)) == signed.key


def entry_from_json(value: Any) -> LogEntry:
    """cosign's `dev.sigstore.cosign/bundle` annotation: {"SignedEntryTimestamp", "Payload": {...}}."""
    payload = value["Payload"]
    return LogEntry(
        body=_text(payload["body"]),
        integrated_time=_count(payload["integratedTime"]),
        log_index=_count(payload["logIndex"]),
        log_id=_hex(payload["logID"]),
        promise=base64.b64decode(value["SignedEntryTimestamp"], validate=True),
    )


def entry_from_bundle(value: Any) -> LogEntry:
    """A Sigstore bundle's tlog entry (protobuf JSON: int64 as strings, bytes as base64)."""
    return LogEntry(
        body=_text(value["canonicalizedBody"]),
        integrated_time=_count(value["integratedTime"]),
        log_index=_count(value["logIndex"]),
        log_id=base64.b64decode(value["logId"]["keyId"], validate=True).hex(),
        promise=base64.b64decode(value["inclusionPromise"]["signedEntryTimestamp"], validate=True),
    )


def _text(value: Any) -> str:
    if not isinstance(value, str) or len(value) > MAX_BODY:
        raise ValueError("not a log entry body")
    return value


def _count(value: Any) -> int:
    number = int(value) if isinstance(value, str) and value.isdigit() else value
    if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number < 2**63:
        raise ValueError("not a count")
    return number


def _hex(value: Any) -> str:
    if not isinstance(value, str) or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ValueError("not a log ID")
    return value
