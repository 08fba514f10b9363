"""The signing kit for the signature tests (issue 25): real signatures on images in the real registry.

- keys: `Key` (ECDSA P-256, RSA 2048, Ed25519) and cosign's encrypted key file.
- authorities: `LocalCA` (Fulcio-shaped leaves), `LocalRekor` (SETs for cosign's bundle annotation).
- cosign: tag-based signatures (`<repo>:sha256-<hex>.sig`), `cosign_signature`, `attach_cosign`.
- bundles: Sigstore bundles signed (`sign_bundle`) and checked (`oracle`) by sigstore's own
  JavaScript libraries (sign.mjs, verify.mjs), attached as OCI referrers (`attach_bundle`).
"""

from __future__ import annotations

from .authorities import LocalCA, LocalRekor, canonical_json, hashedrekord_body
from .bundles import (
    BUNDLE_MEDIA_TYPE,
    NodeScriptError,
    Verdict,
    add_referrer,
    attach_bundle,
    fallback_index,
    oracle,
    referrers_tag,
    sign_bundle,
    statement,
    with_flipped_signature,
    with_statement,
)
from .cosign import (
    ANNOTATION_BUNDLE,
    ANNOTATION_CERTIFICATE,
    ANNOTATION_CHAIN,
    ANNOTATION_SIGNATURE,
    DEFAULT_EMAIL,
    DEFAULT_ISSUER,
    SIMPLE_SIGNING,
    CosignLayer,
    attach_cosign,
    cosign_signature,
    cosign_tag,
    flip_base64,
    simple_signing_payload,
)
from .keys import CosignKeyError, Key, decrypt_cosign_key, encrypt_cosign_key

__all__ = [
    "ANNOTATION_BUNDLE",
    "ANNOTATION_CERTIFICATE",
    "ANNOTATION_CHAIN",
    "ANNOTATION_SIGNATURE",
    "BUNDLE_MEDIA_TYPE",
    "DEFAULT_EMAIL",
    "DEFAULT_ISSUER",
    "SIMPLE_SIGNING",
    "CosignKeyError",
    "CosignLayer",
    "Key",
    "LocalCA",
    "LocalRekor",
    "NodeScriptError",
    "Verdict",
    "add_referrer",
    "attach_bundle",
    "attach_cosign",
    "canonical_json",
    "cosign_signature",
    "cosign_tag",
    "decrypt_cosign_key",
    "encrypt_cosign_key",
    "fallback_index",
    "flip_base64",
    "hashedrekord_body",
    "oracle",
    "referrers_tag",
    "sign_bundle",
    "simple_signing_payload",
    "statement",
    "with_flipped_signature",
    "with_statement",
]
