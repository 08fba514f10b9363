"""Which name a signature claims, and whether the policy's signedIdentity accepts it for an image.

Names are compared fully expanded, as containers/image compares them: `alpine` and
`index.docker.io/library/alpine` both mean `docker.io/library/alpine`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mirror.registry.reference import DOCKER_HUB, NAME_RE, TAG_RE
from mirror.signatures.policy import SignedIdentity, namespaces

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}")
_HOST = re.compile(r"localhost(?::[0-9]+)?|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*(?::[0-9]+)?|\[[0-9A-Fa-f:]+\](?::[0-9]+)?")
_LEGACY_HUB = "index.docker.io"
MAX_REFERENCE = 512


@dataclass(frozen=True)
class DockerReference:
    """A name, fully expanded (`docker.io/library/alpine`), with its tag, digest, both or neither."""

    name: str
    tag: str | None = None
    digest: str | None = None

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text

    @property
    def has_reference(self) -> bool:
        return self.tag is not None or self.digest is not None


class IdentityError(ValueError):
    """Not a docker reference."""


def parse_docker_reference(text: str) -> DockerReference:
    """A docker reference as a signature claims it, expanded as Docker expands names; IdentityError if invalid."""
    if not isinstance(text, str) or not text or len(text) > MAX_REFERENCE:
        raise IdentityError("not a docker reference")
    name, _, digest = text.partition("@")
    if digest and not _DIGEST.fullmatch(digest):
        raise IdentityError(f"not a digest: {digest[:80]!r}")
    tag = None
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, _, tag = name.rpartition(":")
        if not TAG_RE.fullmatch(tag):
            raise IdentityError(f"not a tag: {tag[:80]!r}")
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        host, path = first, rest
    else:
        host, path = DOCKER_HUB, name
    if not _HOST.fullmatch(host) or not NAME_RE.fullmatch(path):
        raise IdentityError(f"not a repository name: {name[:200]!r}")
    if host == _LEGACY_HUB:
        host = DOCKER_HUB
    if host == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    return DockerReference(f"{host}/{path}", tag, digest or None)


def accepts(identity: SignedIdentity, image: DockerReference, signed: DockerReference) -> str | None:
    """None when `signed` (the signature's claim) is acceptable for `image` under `identity`,
    else why not, in a few words."""
    kind = identity.type
    if kind == "matchExact":
        return _exact(image, signed)
    if kind == "matchRepoDigestOrExact":
        return _repo_digest_or_exact(image, signed)
    if kind == "matchRepository":
        return None if image.name == signed.name else _other_repository(signed)
    if kind == "exactReference":
        wanted = parse_docker_reference(identity.docker_reference or "")
        return None if signed == wanted else f"the signature is for {signed}, not {wanted}"
    if kind == "exactRepository":
        wanted_name = parse_docker_reference(identity.docker_repository or "").name
        return None if signed.name == wanted_name else f"the signature is for {signed.name}, not {wanted_name}"
    if kind == "remapIdentity":
        remapped = _remapped(image, identity.prefix or "", identity.signed_prefix or "")
        return _repo_digest_or_exact(remapped, signed)
    return f"signedIdentity {kind} is not understood"  # the policy reader lets no other through


def _exact(image: DockerReference, signed: DockerReference) -> str | None:
    if not image.has_reference or not signed.has_reference:
        return f"the signature for {signed} does not name {image} exactly"
    return None if image == signed else f"the signature is for {signed}, not {image}"


def _repo_digest_or_exact(image: DockerReference, signed: DockerReference) -> str | None:
    if image.digest is not None and image.tag is None:
        return None if image.name == signed.name else _other_repository(signed)
    return _exact(image, signed)


def _other_repository(signed: DockerReference) -> str:
    return f"the signature is for another repository ({signed.name})"


def _remapped(image: DockerReference, prefix: str, signed_prefix: str) -> DockerReference:
    """The image's name with `prefix` replaced by `signed_prefix` (remapIdentity), when it matches."""
    if prefix.startswith("*."):
        return image  # a wildcard prefix cannot be remapped: containers/image compares the image as is
    if prefix in namespaces(image.name):
        return DockerReference(signed_prefix + image.name[len(prefix) :], image.tag, image.digest)
    return image
