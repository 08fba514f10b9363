"""`mirror rm`: what removing images, manifests and blobs takes out of the cache directory.

Planned and applied on the directory's index and files; the running server applies the same
plan and also forgets what it holds in memory (`mirror/http/admin.py`), so nothing removed is
answered from memory afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mirror.cache.directory import CacheDirectory
from mirror.cache.index import MetadataIndex, TagEntries
from mirror.registry.errors import RegistryError
from mirror.registry.mediatypes import referenced_digests
from mirror.registry.reference import DOCKER_HUB, docker_hub_name, parse_digest, parse_image, parse_name


class RemovalError(ValueError):
    pass


@dataclass(frozen=True)
class Target:
    """What `mirror rm` was given: an image (`alpine:3.19`, `ghcr.io/org/app@sha256:…`) or a bare digest."""

    text: str
    upstream: str | None  # None: a bare digest, wherever it is
    repository: str | None
    reference: str  # a tag or a digest

    @property
    def is_digest(self) -> bool:
        return ":" in self.reference


def parse_target(text: str) -> Target:
    text = text.strip()
    try:
        if text.startswith(("sha256:", "sha512:")) and "/" not in text:
            return Target(text, None, None, str(parse_digest(text)))
        ref = parse_image(text)
        upstream = ref.registry or DOCKER_HUB
        repository = docker_hub_name(ref.repository) if upstream == DOCKER_HUB else ref.repository
        parse_name(repository)
        if ":" in ref.reference:
            parse_digest(ref.reference)
    except RegistryError as exc:
        raise RemovalError(f"{text!r} is not an image or a digest: {exc.message}") from None
    return Target(text, upstream, repository, ref.reference)


@dataclass
class Removal:
    tags: list[tuple[str, str, str]] = field(default_factory=list)  # (upstream, repository, tag)
    manifests: set[str] = field(default_factory=set)
    blobs: set[str] = field(default_factory=set)  # layers and configs, with --blobs or named
    unknown: list[str] = field(default_factory=list)  # targets that named nothing cached

    def summary(self) -> dict[str, object]:
        return {
            "tags": [f"{u}/{r}:{t}" for u, r, t in self.tags],
            "manifests": sorted(self.manifests),
            "blobs": sorted(self.blobs),
            "unknown": self.unknown,
        }


def plan_removal(cache: CacheDirectory, targets: list[Target], with_blobs: bool) -> Removal:
    """What removing the targets takes: their tags, the manifests only they kept (with an index's
    children), and with `with_blobs` the layers and configs nothing kept still names."""
    index = cache.metadata
    removal = Removal()
    all_tags = list(index.tags())
    for target in targets:
        found = _tags_of(target, all_tags)
        removal.tags += [tag for tag in found if tag not in removal.tags]
        if target.is_digest:
            if index.manifest(target.reference) is not None:
                removal.manifests.add(target.reference)
            elif cache.has(target.reference):
                removal.blobs.add(target.reference)  # a layer or config, named on purpose
            elif not found:
                removal.unknown.append(target.text)
        elif found:
            removal.manifests |= {
                e.digest for u, r, t, entries in all_tags if (u, r, t) in found for e in entries.values()
            }
        else:
            removal.unknown.append(target.text)
    removed_tags = set(removal.tags)
    kept_by_tags = {
        e.digest for u, r, t, entries in all_tags if (u, r, t) not in removed_tags for e in entries.values()
    }
    bodies: dict[str, object] = {digest: cache.read_json(digest) for digest, _ in index.manifests()}
    kept = _closure(kept_by_tags, bodies)
    removal.manifests = _closure(removal.manifests, bodies) - kept
    if with_blobs:
        named = set().union(*(referenced_digests(bodies[d]) for d in removal.manifests if bodies.get(d)))
        still = set().union(*(referenced_digests(body) for d, body in bodies.items() if d not in removal.manifests))
        removal.blobs |= {d for d in named - still - set(bodies) if cache.has(d)}
    return removal


def _tags_of(target: Target, all_tags: list[tuple[str, str, str, TagEntries]]) -> list[tuple[str, str, str]]:
    """The tags a target removes: the tag itself, or every tag (of its repository) on its digest."""
    if not target.is_digest:
        key = (target.upstream, target.repository, target.reference)
        return [(u, r, t) for u, r, t, _ in all_tags if (u, r, t) == key]
    return [
        (u, r, t)
        for u, r, t, entries in all_tags
        if any(e.digest == target.reference for e in entries.values())
        and (target.upstream is None or (u, r) == (target.upstream, target.repository))
    ]


def _closure(manifests: set[str], bodies: dict[str, object]) -> set[str]:
    """The manifests and the child manifests of the indexes among them."""
    found = set(manifests)
    pending = list(manifests)
    while pending:
        body = bodies.get(pending.pop())
        for child in referenced_digests(body) & set(bodies):
            if child not in found:
                found.add(child)
                pending.append(child)
    return found


def apply_to_index(index: MetadataIndex, removal: Removal) -> None:
    """Forget the tags, the manifests' records and every link to what goes."""
    for upstream, repository, tag in removal.tags:
        index.forget_tag_if(upstream, repository, tag, lambda _entries: True)
    for digest in removal.manifests:
        index.forget_manifest(digest)
    index.unlink(removal.manifests | removal.blobs)


def apply_to_directory(cache: CacheDirectory, removal: Removal) -> None:
    """With no server running: the index, then the files."""
    apply_to_index(cache.metadata, removal)
    for digest in removal.manifests | removal.blobs:
        cache.blob_path(digest).unlink(missing_ok=True)
