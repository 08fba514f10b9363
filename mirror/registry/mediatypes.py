"""Manifest media types, Accept negotiation and platforms, as the distribution and image specs define them."""

from __future__ import annotations

import json
import re

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
INDEX_TYPES = frozenset({DOCKER_MANIFEST_LIST, OCI_INDEX})
# The deprecated OCI artifact manifest (from OCI 1.1's release candidates), still served where held.
OCI_ARTIFACT_MANIFEST = "application/vnd.oci.artifact.manifest.v1+json"
MANIFEST_TYPES = frozenset({DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_MANIFEST, OCI_INDEX, OCI_ARTIFACT_MANIFEST})
SCHEMA1_TYPES = frozenset(
    {
        "application/vnd.docker.distribution.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
    }
)
SCHEMA1_REFUSED = (
    "a Docker schema1 manifest ({}), which this mirror does not serve: schema1 was deprecated in 2017 and "
    "current Docker and containerd no longer pull it by default; push the image again as schema2 or OCI"
)
_GENERIC_TYPES = frozenset({"", "application/json", "application/octet-stream", "text/plain"})
# A manifest whose config is one of these is a container image; any other config makes it an artifact.
IMAGE_CONFIG_TYPES = frozenset(
    {"application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"}
)
MAX_MANIFEST = 4 * 1024 * 1024  # the distribution registry's own limit on a manifest's size
# Every manifest type, for a client that takes whatever the tag is (prefetch, the warmer, export).
ACCEPT_ALL = ", ".join([OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST])


# Clients send a handful of distinct Accept sets, on every request, so parsed sets are
# cached: only small ones, since a request head may carry 64 KiB of Accept.
_CACHE_ENTRIES = 256
_CACHED_VALUES = 8
_CACHED_CHARS = 1024
_CACHED_TYPES = 32
_accepted_cache: dict[tuple[str, ...], frozenset[str]] = {}
_accept_key_cache: dict[frozenset[str], str] = {}


def accepted_types(accept_values: list[str]) -> frozenset[str]:
    """The media types named by all `Accept` headers; q=0 excludes, other parameters are dropped."""
    values = tuple(accept_values)
    cached = _accepted_cache.get(values)
    if cached is not None:
        return cached
    types = _accepted_types(values)
    if len(values) <= _CACHED_VALUES and sum(map(len, values)) <= _CACHED_CHARS and len(types) <= _CACHED_TYPES:
        if len(_accepted_cache) >= _CACHE_ENTRIES:
            _accepted_cache.clear()
        _accepted_cache[values] = types
    return types


def _accepted_types(accept_values: tuple[str, ...]) -> frozenset[str]:
    types: set[str] = set()
    for value in accept_values:
        for item in value.split(","):
            media_type, *params = (part.strip() for part in item.split(";"))
            if media_type and not any(p.replace(" ", "") in ("q=0", "q=0.0", "q=0.00", "q=0.000") for p in params):
                types.add(media_type.lower())
    return frozenset(types)


def admits(accepted: frozenset[str], media_type: str) -> bool:
    """Whether a client with these accepted types can take a manifest of this type."""
    if not accepted or "*/*" in accepted or media_type in accepted:
        return True
    return f"{media_type.split('/')[0]}/*" in accepted


# What `mirror prefetch`, `mirror pin`, `[[prefetch]]` and `[[pin]]` fetch of an index unless told.
DEFAULT_PLATFORM = "linux/amd64"


def is_platform(text: object) -> bool:
    """`os/architecture[/variant]` as a user names one: `linux/arm64`, `linux/arm/v7`."""
    return isinstance(text, str) and re.fullmatch(r"[a-z0-9]+/[a-z0-9]+(/[a-z0-9]+)?", text) is not None


def platform_name(platform: object) -> str:
    """`os/architecture[/variant]` of a descriptor's `platform` or an image config."""
    if not isinstance(platform, dict):
        return "unknown/unknown"
    parts = [str(platform.get("os", "unknown")), str(platform.get("architecture", "unknown"))]
    if platform.get("variant"):
        parts.append(str(platform["variant"]))
    return "/".join(parts)


def platform_matches(platform: str, wanted: str) -> bool:
    """`linux/arm64` matches `linux/arm64/v8`; `linux/arm/v7` only itself."""
    return platform.split("/")[: len(want := wanted.strip("/").split("/"))] == want


def accept_key(accepted: frozenset[str]) -> str:
    key = _accept_key_cache.get(accepted)
    if key is None:
        key = ",".join(sorted(accepted))
        if len(accepted) <= _CACHED_TYPES and len(key) <= _CACHED_CHARS:
            if len(_accept_key_cache) >= _CACHE_ENTRIES:
                _accept_key_cache.clear()
            _accept_key_cache[accepted] = key
    return key


def referenced_digests(manifest: object) -> set[str]:
    """What a manifest (parsed JSON) names by digest: what it requires, and its subject."""
    subject = manifest.get("subject") if isinstance(manifest, dict) else None
    return required_digests(manifest) | _digests_of([subject])


def required_digests(manifest: object) -> set[str]:
    """What a manifest requires its repository to hold: config, layers or blobs, an index's children.

    Not its `subject`: a registry accepts a subject it does not hold (OCI 1.1), so naming one
    proves nothing about where that digest lives.
    """
    if not isinstance(manifest, dict):
        return set()
    descriptors = [manifest.get("config")]
    for key in ("layers", "blobs", "manifests"):
        listed = manifest.get(key)
        if isinstance(listed, list):
            descriptors += listed
    return _digests_of(descriptors)


def _digests_of(descriptors: list[object]) -> set[str]:
    return {d["digest"] for d in descriptors if isinstance(d, dict) and isinstance(d.get("digest"), str)}


class NotAManifest(ValueError):
    """A body that is not a manifest this mirror serves (the message says what it is instead)."""


def manifest_media_type(body: bytes, content_type: str) -> str:
    """The media type to serve a fetched manifest as: a JSON object of a manifest media type.

    The upstream's Content-Type decides when it names a manifest type; a generic one (JSON,
    octet-stream, none) defers to the body's own `mediaType`. Anything else (an HTML page, a
    schema1 manifest) raises NotAManifest: it is never stored, nor served from this origin.
    """
    if content_type in SCHEMA1_TYPES:
        raise NotAManifest(SCHEMA1_REFUSED.format(content_type))
    try:
        parsed = json.loads(body)
    except ValueError:
        raise NotAManifest(f"a {content_type or 'body'} that is not JSON") from None
    if not isinstance(parsed, dict):
        raise NotAManifest("JSON that is not an object")
    if parsed.get("schemaVersion") == 1:
        raise NotAManifest(SCHEMA1_REFUSED.format("schemaVersion 1"))
    if content_type in MANIFEST_TYPES:
        return content_type
    declared = parsed.get("mediaType")
    if content_type in _GENERIC_TYPES and declared in MANIFEST_TYPES:
        return str(declared)
    raise NotAManifest(f"Content-Type {content_type[:100]!r} is not a manifest media type")
