"""The referrers API's grammar (distribution spec v1.1): the fallback tag, descriptors, the index, the filter."""

from __future__ import annotations

import json
from typing import Any

from mirror.registry.errors import ManifestInvalid
from mirror.registry.mediatypes import OCI_INDEX
from mirror.registry.reference import Digest

# What the answer says when it was filtered (only for filters actually applied).
FILTERS_APPLIED_HEADER = "OCI-Filters-Applied"


def fallback_tag(digest: Digest) -> str:
    """The tag a registry without the API keeps the referrers index under: `<alg>-<hex>`."""
    return f"{digest.algorithm}-{digest.hex}"


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


def referrers_index(descriptors: list[dict[str, Any]] | tuple[dict[str, Any], ...], artifact_type: str | None) -> bytes:
    """The answer's body: an image index of the descriptors, only those of `artifact_type` if given."""
    if artifact_type is not None:
        descriptors = [d for d in descriptors if d.get("artifactType") == artifact_type]
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": list(descriptors)}).encode()
