"""Pins: images never evicted (`mirror pin`, `[[pin]]`, `mirror import`), within max_size.

A pin names an image and holds the digests it had when pinned: its manifests (an index's
children too) and every config and layer they name, with their declared sizes. The blob
store never evicts a pinned digest. Pins are kept in the metadata index, keyed and encoded
as `mirror.cache.layout` says (`pin_key`, `encode_pin`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from mirror.cache.directory import CacheDirectory
from mirror.cache.layout import PIN, decode_pin, encode_pin, pin_key
from mirror.cache.removal import Removal, RemovalError, Target


class PinError(ValueError):
    """A pin refused: not cached, or beyond max_size. The message says which and what to do."""


@dataclass(frozen=True)
class Pin:
    name: str  # docker.io/library/alpine:3.19
    digests: dict[str, int]  # digest -> declared size

    @property
    def size(self) -> int:
        return sum(self.digests.values())


def image_digests(cache: CacheDirectory, target: Target) -> dict[str, int]:
    """An image's digests with their declared sizes: what pinning it keeps. PinError if not cached."""
    assert target.upstream is not None and target.repository is not None
    if target.is_digest:
        roots = {target.reference}
    else:
        entries = cache.metadata.tag(target.upstream, target.repository, target.reference)
        roots = {entry.digest for entry in entries.values()}
    roots = {root for root in roots if cache.read_json(root) is not None}
    if not roots:
        raise PinError(f"{target.text} is not cached: pull it (or `mirror prefetch` it) first, then pin it")
    found: dict[str, int] = {}
    pending = list(roots)
    while pending:
        digest = pending.pop()
        manifest = cache.read_json(digest)
        found[digest] = cache.size(digest) or 0
        for descriptor in _descriptors(manifest or {}):
            named = descriptor["digest"]
            if named in found:
                continue
            if cache.metadata.manifest(named) is not None:  # an index's child: its blobs too
                pending.append(named)
            else:
                found[named] = int(descriptor.get("size") or 0)
    return found


def _descriptors(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    listed = [manifest.get("config"), *(manifest.get("layers") or []), *(manifest.get("manifests") or [])]
    return [d for d in listed if isinstance(d, dict) and isinstance(d.get("digest"), str)]


def load_pins(cache: CacheDirectory) -> list[Pin]:
    pins = []
    for parts, value in cache.metadata.items_of(PIN):
        digests = decode_pin(value)
        if digests is None:
            continue
        upstream, repository, reference = parts
        separator = "@" if ":" in reference else ":"
        pins.append(Pin(f"{upstream}/{repository}{separator}{reference}", digests))
    return pins


def pin(cache: CacheDirectory, targets: list[Target], max_size: int | None, others: list[Pin]) -> list[Pin]:
    """Pin the targets (recorded in the index); refused whole if all pins together exceed max_size."""
    made = []
    for target in targets:
        assert target.upstream is not None and target.repository is not None
        separator = "@" if target.is_digest else ":"
        made.append(
            Pin(f"{target.upstream}/{target.repository}{separator}{target.reference}", image_digests(cache, target))
        )
    check_budget([*load_pins(cache), *others, *made], max_size)
    for target, made_pin in zip(targets, made, strict=True):
        assert target.upstream is not None and target.repository is not None
        value = encode_pin(made_pin.digests, time.time())
        cache.metadata.set_raw(pin_key(target.upstream, target.repository, target.reference), value)
    return made


def unpin(cache: CacheDirectory, targets: list[Target]) -> list[str]:
    """Forget pins; the names that were pinned."""
    gone = []
    for target in targets:
        assert target.upstream is not None and target.repository is not None
        if cache.metadata.delete_raw(pin_key(target.upstream, target.repository, target.reference)):
            separator = "@" if target.is_digest else ":"
            gone.append(f"{target.upstream}/{target.repository}{separator}{target.reference}")
    return gone


def check_budget(pins: list[Pin], max_size: int | None) -> None:
    if max_size is None:
        return
    needed = sum(dict(pair for pin in pins for pair in pin.digests.items()).values())  # shared blobs once
    if needed > max_size:
        raise PinError(
            f"pinned images would take {needed} bytes, more than [cache] max_size ({max_size}): "
            "unpin something, or raise max_size"
        )


class PinnedError(RemovalError):
    """A removal that would take a pinned image's content, asked without --force."""


def refuse_pinned(cache: CacheDirectory, removal: Removal) -> None:
    """Raise PinnedError, naming the pins, when `removal` takes a tag or a digest of one."""
    tags = {f"{u}/{r}:{t}" for u, r, t in removal.tags}
    taken = removal.manifests | removal.blobs
    hit = sorted(pin.name for pin in load_pins(cache) if pin.name in tags or taken & set(pin.digests))
    if hit:
        raise PinnedError(
            f"{', '.join(hit[:5])}{' …' if len(hit) > 5 else ''} pinned: `mirror unpin` first, or remove with --force"
        )
