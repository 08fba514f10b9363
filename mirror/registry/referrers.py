"""The referrers API's grammar (distribution spec v1.1): the fallback tag, descriptors, the index, the filter."""

from __future__ import annotations

import json
from typing import Any

from mirror.registry.errors import ManifestInvalid
from mirror.registry.mediatypes import OCI_INDEX
from mirror.registry.paging import page
from mirror.registry.reference import Digest

# What the answer says when it was filtered (only for filters actually applied).
FILTERS_APPLIED_HEADER = "OCI-Filters-Applied"
# What a sigstore bundle referrer's artifactType starts with (bundle v0.1 to v0.3, `+json`).
SIGSTORE_BUNDLE = "application/vnd.dev.sigstore.bundle"


def fallback_tag(digest: Digest) -> str:
    """The tag a registry without the API keeps the referrers index under: `<alg>-<hex>`."""
    return f"{digest.algorithm}-{digest.hex}"


def cosign_signature_tag(digest: Digest) -> str:
    """The tag cosign attaches a digest's signatures under: `<alg>-<hex>.sig`."""
    return f"{fallback_tag(digest)}.sig"


def is_sigstore_bundle(descriptor: dict[str, Any]) -> bool:
    """Whether a referrer's descriptor says it is a sigstore bundle."""
    artifact_type = descriptor.get("artifactType")
    return isinstance(artifact_type, str) and artifact_type.startswith(SIGSTORE_BUNDLE)


def index_descriptors(body: bytes) -> list[dict[str, Any]]:
    """The descriptors an image index lists (the fallback tag's, or a referrers answer's)."""
    try:
        index = json.loads(body)
    except ValueError:
        raise ManifestInvalid("a referrers index that is not JSON") from None
    manifests = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(manifests, list):
        raise ManifestInvalid("a referrers index without a list of manifests")
    return [d for d in manifests if isinstance(d, dict) and isinstance(d.get("digest"), str)]


def with_artifact_type(descriptor: dict[str, Any], manifest_body: bytes) -> dict[str, Any]:
    """The descriptor with the referrer's artifactType: the manifest's own, else its config's
    media type; and the manifest's annotations, as the spec has the registry copy them."""
    try:
        manifest = json.loads(manifest_body)
    except ValueError:
        return descriptor
    if not isinstance(manifest, dict):
        return descriptor
    config = manifest.get("config")
    artifact_type = manifest.get("artifactType") or (config.get("mediaType") if isinstance(config, dict) else None)
    described = dict(descriptor)
    if isinstance(artifact_type, str):
        described["artifactType"] = artifact_type
    if isinstance(manifest.get("annotations"), dict) and "annotations" not in described:
        described["annotations"] = manifest["annotations"]
    return described


def referrers_page(
    descriptors: tuple[dict[str, Any], ...], artifact_type: str | None, n: int | None, last: str | None
) -> tuple[bytes, str | None]:
    """One page of the answer: an image index of the descriptors (only those of `artifact_type` if
    given) in digest order, after the digest `last`, at most `n`; and the next page's `last`, if any."""
    by_digest = {d["digest"]: d for d in descriptors if artifact_type is None or d.get("artifactType") == artifact_type}
    chosen, next_last = page(sorted(by_digest), n, last)
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [by_digest[digest] for digest in chosen]}
    return json.dumps(index, separators=(",", ":")).encode(), next_last
