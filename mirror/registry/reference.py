"""The distribution spec's grammar for repository names, tags and digests, and Docker Hub's rules."""

from __future__ import annotations

import re
from dataclasses import dataclass

from mirror.registry.errors import DigestInvalid, NameInvalid, TagInvalid

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
DIGEST_RE = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
MAX_NAME_LENGTH = 255

# Algorithms we can verify, with the exact length of their lowercase hex encoding.
DIGEST_ALGORITHMS = {"sha256": 64, "sha512": 128}
_HEX_RE = re.compile(r"[0-9a-f]+")


@dataclass(frozen=True, slots=True)
class Digest:
    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


def parse_name(name: str) -> str:
    if len(name) > MAX_NAME_LENGTH or not NAME_RE.fullmatch(name):
        raise NameInvalid(detail={"name": name[:MAX_NAME_LENGTH]})
    return name


def parse_digest(text: str) -> Digest:
    """Parse and validate a digest; only verifiable algorithms are accepted."""
    if not DIGEST_RE.fullmatch(text):
        raise DigestInvalid("invalid digest", detail={"digest": text[:200]})
    algorithm, _, encoded = text.partition(":")
    length = DIGEST_ALGORITHMS.get(algorithm)
    if length is None:
        raise DigestInvalid("unsupported digest algorithm", detail={"digest": text[:200]})
    if len(encoded) != length or not _HEX_RE.fullmatch(encoded):
        raise DigestInvalid("invalid digest", detail={"digest": text[:200]})
    return Digest(algorithm, encoded)


def is_digest(reference: str) -> bool:
    return ":" in reference


def parse_reference(reference: str) -> str | Digest:
    """A manifest reference is a tag or a digest."""
    if is_digest(reference):
        return parse_digest(reference)
    if not TAG_RE.fullmatch(reference):
        raise TagInvalid(detail={"tag": reference[:200]})
    return reference


# Docker Hub: the name clients and the config give it, where its registry answers, and the other
# hosts that are it (an image named `index.docker.io/library/alpine` is Docker Hub's alpine).
DOCKER_HUB = "docker.io"
DOCKER_HUB_URL = "https://registry-1.docker.io"
DOCKER_HUB_HOSTS = frozenset({"registry-1.docker.io", "index.docker.io", "registry.hub.docker.com"})


def docker_hub_name(name: str) -> str:
    """Docker Hub puts single-component names under the implicit `library/` namespace."""
    return name if "/" in name else f"library/{name}"


def is_registry_host(component: str) -> bool:
    """Docker's rule: a first path component with a dot, a port or `localhost` names a registry."""
    return "." in component or ":" in component or component == "localhost"


@dataclass(frozen=True)
class ImageRef:
    registry: str | None  # None: the mirror's default upstream
    repository: str
    reference: str  # tag or digest


def parse_image(text: str) -> ImageRef:
    """Docker's short forms: `alpine`, `alpine:3.19`, `ghcr.io/org/app:1.0`, `app@sha256:…`.

    Only the shape is read here; callers validate the parts with parse_name and parse_reference.
    """
    name, _, digest = text.partition("@")
    first, _, rest = name.partition("/")
    registry = first if rest and is_registry_host(first) else None
    path = rest if registry else name
    repository, _, tag = path.rpartition(":") if ":" in path.rsplit("/", 1)[-1] else (path, "", "latest")
    if registry is None:
        repository = docker_hub_name(repository)
    return ImageRef(registry, repository, digest or tag)


def repository_named(text: str, default_upstream: str) -> tuple[str, str]:
    """(registry, repository) a name means as Docker reads it: `alpine` is docker.io's
    `library/alpine`, `org/app` is docker.io's too, `ghcr.io/org/app` is ghcr.io's."""
    first, _, rest = text.partition("/")
    upstream, name = (first, rest) if rest and is_registry_host(first) else (default_upstream, text)
    return upstream, docker_hub_name(name) if upstream == DOCKER_HUB else name


def repository_and_tag(text: str, default_upstream: str) -> tuple[str, str, str | None]:
    """(registry, repository, tag or None: every tag) a name means as Docker reads it: `alpine:3.19`,
    `ghcr.io/org/app`. A digest has no tag: NameInvalid. Names and tags are checked."""
    if "@" in text:
        raise NameInvalid("a digest has no tag history: name a tag, or the repository", detail={"name": text[:200]})
    name, tag = text, None
    if ":" in text.rsplit("/", 1)[-1]:
        name, _, tag = text.rpartition(":")
        parse_reference(tag)
    upstream, repository = repository_named(name, default_upstream)
    parse_name(repository)
    return upstream, repository, tag
