"""Image names as Docker writes them, and the checks every archive entry passes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mirror.registry.errors import RegistryError
from mirror.registry.mediatypes import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    accept_key,
)
from mirror.registry.reference import (
    DOCKER_HUB,
    DOCKER_HUB_HOSTS,
    TAG_RE,
    Digest,
    docker_hub_name,
    parse_digest,
    parse_image,
    parse_name,
)

CHUNK = 1024 * 1024
MAX_CONFIG = 64 * 1024 * 1024
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"
# On index.json entries of mirror's own archives: the image (upstream/repository@digest) a signature
# entry signs. Other readers ignore it: a `.sig` entry is a tagged image to them, a bundle an untagged one.
SIGNATURE_OF = "dev.mirror.signature.of"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_UNCOMPRESSED = "application/vnd.docker.image.rootfs.diff.tar"
# Imported tags answer every client that can read their media type.
IMPORT_ACCEPT = accept_key(frozenset({DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_MANIFEST, OCI_INDEX}))


class ArchiveError(Exception):
    """An archive or a cache that cannot be used: the message says what and where."""


@dataclass(frozen=True)
class ImageName:
    upstream: str  # the registry host, as in the config's [upstreams."<host>"]
    repository: str
    reference: str  # a tag or a digest

    @property
    def is_digest(self) -> bool:
        return ":" in self.reference

    def __str__(self) -> str:
        separator = "@" if self.is_digest else ":"
        return f"{self.upstream}/{self.repository}{separator}{self.reference}"

    def docker_tag(self) -> str | None:
        """The name as `docker images` shows it (`alpine:3.19`, `ghcr.io/org/app:1.0`)."""
        if self.is_digest:
            return None
        if self.upstream == DOCKER_HUB:
            return f"{self.repository.removeprefix('library/')}:{self.reference}"
        return str(self)


def parse_image_name(text: str) -> ImageName:
    """Docker's names: `alpine:3.19` is docker.io/library/alpine:3.19; a name without a tag means `latest`."""
    ref = parse_image(text.strip())
    upstream = ref.registry or DOCKER_HUB
    if upstream in DOCKER_HUB_HOSTS:
        upstream = DOCKER_HUB
    repository = docker_hub_name(ref.repository) if upstream == DOCKER_HUB else ref.repository
    try:
        parse_name(repository)
        if ":" in ref.reference:
            parse_digest(ref.reference)
        elif not TAG_RE.fullmatch(ref.reference):
            raise ArchiveError(f"invalid tag in image name {text!r}")
    except RegistryError as exc:
        raise ArchiveError(f"invalid image name {text!r}: {exc.message}") from None
    return ImageName(upstream, repository, ref.reference)


def descriptors(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The config and layer descriptors of an image manifest."""
    found = [manifest.get("config"), *(manifest.get("layers") or [])]
    return [d for d in found if isinstance(d, dict) and isinstance(d.get("digest"), str)]


def parse_json(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise ArchiveError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ArchiveError(f"{what} is not a JSON object")
    return value


def checked_digest(text: object, what: str) -> Digest:
    try:
        return parse_digest(str(text))
    except RegistryError:
        raise ArchiveError(f"{what}: invalid digest {text!r}") from None
