"""Signatures as the registry holds them, read into candidates before anything is checked.

Two formats: cosign's attachment (the `sha256-<hex>.sig` tag: one layer per signature, the
simple-signing payload as the layer, the signature, certificate, chain and log entry as its
annotations), and Sigstore bundles attached as referrers (cosign's bundle specification), of
which the mirror reads DSSE envelopes holding an in-toto statement with cosign's signing
predicate. Every field is untrusted: sizes are bounded, a malformed one makes a candidate that
says what is wrong, never an exception.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from mirror.registry.referrers import SIGSTORE_BUNDLE
from mirror.signatures.crypto import MaterialError, certificate, certificates
from mirror.signatures.identity import DockerReference, IdentityError, parse_docker_reference
from mirror.signatures.rekor import LogEntry, entry_from_bundle, entry_from_json

SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
CERTIFICATE_ANNOTATION = "dev.sigstore.cosign/certificate"
CHAIN_ANNOTATION = "dev.sigstore.cosign/chain"
BUNDLE_ANNOTATION = "dev.sigstore.cosign/bundle"
SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
COSIGN_PAYLOAD_TYPE = "cosign container image signature"
IN_TOTO = "application/vnd.in-toto+json"
SIGN_PREDICATE = "https://sigstore.dev/cosign/sign/v1"
STATEMENTS = ("https://in-toto.io/Statement/v1", "https://in-toto.io/Statement/v0.1")
MAX_PAYLOAD = 64 * 1024  # a simple-signing payload or a DSSE statement
MAX_BUNDLE = 1024 * 1024
MAX_SIGNATURES = 32  # per attachment or bundle


@dataclass(frozen=True)
class Candidate:
    """One signature found for an image: what it claims, what it is over, and what vouches for it."""

    origin: str  # where it was found, for messages
    signature: bytes = b""
    signed: bytes = b""  # the bytes the signature is over
    logged: bytes = b""  # what the log entry's hash is of (the payload itself)
    digest: str | None = None  # the manifest digest it claims
    identity: DockerReference | None = None  # the name it claims
    certificate: x509.Certificate | None = None
    chain: tuple[x509.Certificate, ...] = ()
    log: LogEntry | None = None
    problem: str | None = None  # why it cannot be checked at all


def cosign_candidates(tag: str, manifest: bytes, payloads: dict[str, bytes]) -> list[Candidate]:
    """The signatures of a cosign `.sig` image: its manifest, and its layers' bytes by digest."""
    try:
        layers = json.loads(manifest)["layers"]
        if not isinstance(layers, list):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        return [Candidate(tag, problem=f"{tag} is not a signature image")]
    found = []
    for number, layer in enumerate(layers[:MAX_SIGNATURES]):
        origin = f"{tag} layer {number}"
        if not isinstance(layer, dict) or layer.get("mediaType") != SIMPLE_SIGNING:
            continue
        payload = payloads.get(str(layer.get("digest")))
        if payload is None:
            found.append(Candidate(origin, problem="its payload could not be read"))
            continue
        found.append(_cosign_layer(origin, layer.get("annotations"), payload))
    return found


def _cosign_layer(origin: str, annotations: Any, payload: bytes) -> Candidate:
    if not isinstance(annotations, dict) or not isinstance(annotations.get(SIGNATURE_ANNOTATION), str):
        return Candidate(origin, problem="it has no signature annotation")
    try:
        signature = _b64(annotations[SIGNATURE_ANNOTATION])
        leaf = chain = None
        if isinstance(annotations.get(CERTIFICATE_ANNOTATION), str) and annotations[CERTIFICATE_ANNOTATION]:
            leaf = certificate(annotations[CERTIFICATE_ANNOTATION].encode())
        if isinstance(annotations.get(CHAIN_ANNOTATION), str) and annotations[CHAIN_ANNOTATION]:
            chain = tuple(certificates(annotations[CHAIN_ANNOTATION].encode()))
        log = None
        if isinstance(annotations.get(BUNDLE_ANNOTATION), str):
            log = entry_from_json(json.loads(annotations[BUNDLE_ANNOTATION]))
    except (ValueError, KeyError, TypeError, binascii.Error, MaterialError) as exc:
        return Candidate(origin, problem=f"its annotations are not readable ({_short(exc)})")
    digest, identity, problem = _simple_signing(payload)
    return Candidate(
        origin,
        signature=signature,
        signed=payload,
        logged=payload,
        digest=digest,
        identity=identity,
        certificate=leaf,
        chain=chain or (),
        log=log,
        problem=problem,
    )


def _simple_signing(payload: bytes) -> tuple[str | None, DockerReference | None, str | None]:
    """(digest, identity, problem) a simple-signing payload claims."""
    if len(payload) > MAX_PAYLOAD:
        return None, None, "its payload is too large"
    try:
        critical = json.loads(payload)["critical"]
        kind = critical["type"]
        digest = critical["image"]["docker-manifest-digest"]
        reference = critical["identity"]["docker-reference"]
    except (ValueError, KeyError, TypeError):
        return None, None, "its payload is not a simple-signing payload"
    if kind != COSIGN_PAYLOAD_TYPE or not isinstance(digest, str):
        return None, None, "its payload is not a cosign container image signature"
    try:
        return digest, parse_docker_reference(reference), None
    except IdentityError as exc:
        return digest, None, f"its payload names no image ({exc})"


def bundle_candidates(origin: str, data: bytes, digest: str) -> list[Candidate]:
    """The signatures of a Sigstore bundle referring to the manifest `digest`."""
    if len(data) > MAX_BUNDLE:
        return [Candidate(origin, problem="the bundle is too large")]
    try:
        bundle = json.loads(data)
        if not str(bundle["mediaType"]).startswith(SIGSTORE_BUNDLE):
            raise TypeError
        material = bundle["verificationMaterial"]
        leaf, chain = _bundle_certificates(material)
        logs = [entry_from_bundle(entry) for entry in material.get("tlogEntries", [])[:MAX_SIGNATURES]]
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error, MaterialError) as exc:
        return [Candidate(origin, problem=f"the bundle is not readable ({_short(exc)})")]
    envelope = bundle.get("dsseEnvelope")
    if not isinstance(envelope, dict):
        return [Candidate(origin, problem="the bundle holds a message signature, which does not say what it signs")]
    try:
        payload = _b64(envelope["payload"])
        payload_type = envelope["payloadType"]
        signatures = [_b64(entry["sig"]) for entry in envelope["signatures"][:MAX_SIGNATURES]]
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        return [Candidate(origin, problem=f"the bundle's envelope is not readable ({_short(exc)})")]
    claimed, identity, problem = _statement(payload_type, payload, digest)
    signed = pae(str(payload_type), payload)
    log = logs[0] if logs else None
    return [
        Candidate(
            origin,
            signature=signature,
            signed=signed,
            logged=payload,
            digest=claimed,
            identity=identity,
            certificate=leaf,
            chain=chain,
            log=log,
            problem=problem,
        )
        for signature in signatures
    ]


def _bundle_certificates(material: dict[str, Any]) -> tuple[x509.Certificate | None, tuple[x509.Certificate, ...]]:
    if "certificate" in material:
        return certificate(_b64(material["certificate"]["rawBytes"])), ()
    if "x509CertificateChain" in material:
        listed = material["x509CertificateChain"]["certificates"][:8]
        found = [certificate(_b64(entry["rawBytes"])) for entry in listed]
        return (found[0], tuple(found[1:])) if found else (None, ())
    return None, ()  # a public key: the policy's keys are tried


def _statement(payload_type: Any, payload: bytes, digest: str) -> tuple[str | None, DockerReference | None, str | None]:
    """(digest, identity, problem) an in-toto statement claims for the image `digest`."""
    if payload_type != IN_TOTO:
        return None, None, f"the bundle signs {str(payload_type)[:60]!r}, not an in-toto statement"
    if len(payload) > MAX_PAYLOAD:
        return None, None, "the bundle's statement is too large"
    try:
        statement = json.loads(payload)
        if statement["_type"] not in STATEMENTS or statement["predicateType"] != SIGN_PREDICATE:
            return None, None, "the bundle's statement is an attestation, not a signature"
        subjects = statement["subject"][:MAX_SIGNATURES]
        algorithm, _, hex_digest = digest.partition(":")
        subject = next((s for s in subjects if s["digest"].get(algorithm) == hex_digest), None)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None, None, "the bundle's statement is not readable"
    if subject is None:
        other = subjects[0].get("digest", {}) if subjects and isinstance(subjects[0], dict) else {}
        return f"sha256:{other.get('sha256', '?')}", None, None
    try:
        return digest, parse_docker_reference(subject["name"]), None
    except (IdentityError, KeyError) as exc:
        return digest, None, f"the bundle's statement names no image ({_short(exc)})"


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what a DSSE signature is over."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def _b64(value: Any) -> bytes:
    if not isinstance(value, str) or len(value) > 4 * MAX_BUNDLE:
        raise ValueError("not base64")
    return base64.b64decode(value, validate=True)


def _short(exc: Exception) -> str:
    return str(exc)[:120] or type(exc).__name__


def is_attachment(body: bytes) -> bool:
    """A signature, not an image: cosign's signature image (only simple-signing layers) or a
    Sigstore bundle artifact (only bundle layers), every layer small. Clients that verify for
    themselves read these through the mirror; nothing in them can be run."""
    try:
        manifest = json.loads(body)
        layers = manifest["layers"]
        if not isinstance(layers, list) or not layers or len(layers) > MAX_SIGNATURES:
            return False
        artifact = str(manifest.get("artifactType") or "")
        if artifact.startswith(SIGSTORE_BUNDLE):
            return all(small_layer(layer, SIGSTORE_BUNDLE, MAX_BUNDLE) for layer in layers)
        return all(small_layer(layer, SIMPLE_SIGNING, MAX_PAYLOAD) for layer in layers)
    except (ValueError, KeyError, TypeError, AttributeError):
        return False


def small_layer(layer: Any, media_type: str, limit: int) -> bool:
    """A descriptor of `media_type` (or a type it begins) declaring at most `limit` bytes."""
    return (
        isinstance(layer, dict)
        and str(layer.get("mediaType", "")).startswith(media_type)
        and isinstance(layer.get("size"), int)
        and 0 <= layer["size"] <= limit
    )
