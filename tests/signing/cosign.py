"""cosign's tag-based signatures (specs/SIGNATURE_SPEC.md): simple-signing payloads signed by a key
or a Fulcio-shaped certificate, with a Rekor SET, pushed as the image cosign writes at
`<repository>:sha256-<hex>.sig`: one layer per signature, each an
application/vnd.dev.cosign.simplesigning.v1+json payload with its signature in the layer's annotations.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, replace
from typing import Any

from support import DOCKER_CONFIG, DOCKER_MANIFEST, OCI_CONFIG, OCI_MANIFEST, Pusher, sha256

from .authorities import LocalCA, LocalRekor
from .keys import Key

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIMPLE_SIGNING_TYPE = "cosign container image signature"
ANNOTATION_SIGNATURE = "dev.cosignproject.cosign/signature"
ANNOTATION_CERTIFICATE = "dev.sigstore.cosign/certificate"
ANNOTATION_CHAIN = "dev.sigstore.cosign/chain"
ANNOTATION_BUNDLE = "dev.sigstore.cosign/bundle"
DEFAULT_EMAIL = "signer@example.com"
DEFAULT_ISSUER = "https://issuer.example.com"


def simple_signing_payload(
    docker_reference: str, manifest_digest: str, optional: dict[str, Any] | None = None
) -> bytes:
    """The payload cosign signs: Go's json.Marshal of its struct (field order kept, no spaces)."""
    document = {
        "critical": {
            "identity": {"docker-reference": docker_reference},
            "image": {"docker-manifest-digest": manifest_digest},
            "type": SIMPLE_SIGNING_TYPE,
        },
        "optional": optional,
    }
    return json.dumps(document, separators=(",", ":")).encode()


@dataclass(frozen=True)
class CosignLayer:
    """One signature of a .sig image: the payload blob and its layer descriptor's annotations."""

    payload: bytes
    annotations: dict[str, str]
    media_type: str = SIMPLE_SIGNING

    @property
    def signature_b64(self) -> str:
        return self.annotations[ANNOTATION_SIGNATURE]

    @property
    def bundle(self) -> dict[str, Any] | None:
        """The parsed `dev.sigstore.cosign/bundle` annotation, when there is one."""
        text = self.annotations.get(ANNOTATION_BUNDLE)
        return None if text is None else dict(json.loads(text))

    def with_annotations(self, **changes: str | None) -> CosignLayer:
        """A copy with annotations set (by their full key, passed as **{key: value}) or removed (None)."""
        annotations = dict(self.annotations)
        for key, value in changes.items():
            if value is None:
                annotations.pop(key, None)
            else:
                annotations[key] = value
        return replace(self, annotations=annotations)

    def with_payload(self, payload: bytes) -> CosignLayer:
        """The same annotations (signature included) over other bytes."""
        return replace(self, payload=payload)

    def descriptor(self) -> dict[str, Any]:
        return {
            "mediaType": self.media_type,
            "size": len(self.payload),
            "digest": sha256(self.payload),
            "annotations": self.annotations,
        }


def cosign_signature(
    key: Key | None,
    docker_reference: str,
    digest: str,
    *,
    ca: LocalCA | None = None,
    email: str = DEFAULT_EMAIL,
    issuer: str = DEFAULT_ISSUER,
    rekor: LocalRekor | None = None,
    integrated_time: int | None = None,
    payload: bytes | None = None,
) -> CosignLayer:
    """A correctly signed layer. With a CA, keyless: a leaf for `key` (a fresh key when None), with the
    chain; with a LocalRekor, the SET bundle (over the public key, or over the leaf when keyless)."""
    if key is None and ca is None:
        raise ValueError("a key-signed layer needs the key")
    signing_key = key or Key.generate()
    body = payload if payload is not None else simple_signing_payload(docker_reference, digest)
    signature_b64 = base64.b64encode(signing_key.sign(body)).decode()
    annotations = {ANNOTATION_SIGNATURE: signature_b64}
    verifier_pem = signing_key.public_pem
    if ca is not None:
        verifier_pem = ca.issue(signing_key, email, issuer)
        annotations[ANNOTATION_CERTIFICATE] = verifier_pem
        annotations[ANNOTATION_CHAIN] = ca.full_chain_pem
    if rekor is not None:
        bundle = rekor.cosign_bundle(signature_b64, body, verifier_pem, integrated_time=integrated_time)
        annotations[ANNOTATION_BUNDLE] = json.dumps(bundle, separators=(",", ":"))
    return CosignLayer(body, annotations)


def cosign_tag(manifest_digest: str) -> str:
    """`sha256:<hex>` → `sha256-<hex>.sig`."""
    return manifest_digest.replace(":", "-") + ".sig"


def signature_manifest(pusher: Pusher, repository: str, layers: list[CosignLayer], *, docker: bool = False) -> bytes:
    """Push the layers and the config of a .sig image; its manifest (not pushed)."""
    diff_ids = [sha256(layer.payload) for layer in layers]
    # What go-containerregistry's empty image becomes once cosign appends static layers.
    config = json.dumps(
        {
            "architecture": "",
            "created": "0001-01-01T00:00:00Z",
            "history": [{"created": "0001-01-01T00:00:00Z"} for _ in layers],
            "os": "",
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "config": {},
        },
        separators=(",", ":"),
    ).encode()
    pusher.blob(repository, config)
    for layer in layers:
        pusher.blob(repository, layer.payload)
    manifest = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST if docker else OCI_MANIFEST,
        "config": {"mediaType": DOCKER_CONFIG if docker else OCI_CONFIG, "size": len(config), "digest": sha256(config)},
        "layers": [layer.descriptor() for layer in layers],
    }
    return json.dumps(manifest, separators=(",", ":")).encode()


def attach_cosign(
    pusher: Pusher, repository: str, manifest_digest: str, layers: list[CosignLayer], *, docker: bool = False
) -> str:
    """Push the .sig image of `manifest_digest` (OCI manifest; Docker schema 2, as older cosign, with
    docker=True), replacing any there; the signature manifest's digest."""
    body = signature_manifest(pusher, repository, layers, docker=docker)
    pusher.manifest(repository, cosign_tag(manifest_digest), body, DOCKER_MANIFEST if docker else OCI_MANIFEST)
    return sha256(body)


def flip_base64(value: str) -> str:
    """The same base64 text with one bit of its middle byte flipped: a signature that must fail."""
    raw = bytearray(base64.b64decode(value))
    raw[len(raw) // 2] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()
