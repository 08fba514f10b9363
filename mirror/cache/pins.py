"""Pins: images never evicted (`mirror pin`, `[[pin]]`, `mirror import`), within max_size.

A pin names an image and holds the digests it had when pinned: its manifests (an index's
children too) and every config and layer they name, with their declared sizes. The blob
store never evicts a pinned digest. Pins are kept in the metadata index, keyed and encoded
as `mirror.cache.layout` says (`pin_key`, `encode_pin`). While the server fetches a pin that
is not cached (`mirror.pinning`), a fetch record (`pin_fetch_key`) says which digests are on
their way, for `mirror ls`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mirror.cache.directory import CacheDirectory
from mirror.cache.layout import (
    PIN,
    PIN_FETCH,
    decode_pin,
    encode_pin,
    encode_pin_fetch,
    pin_fetch_key,
    pin_fetch_server,
    pin_key,
)
from mirror.cache.removal import Removal, RemovalError, Target
from mirror.registry.mediatypes import platform_matches, platform_name


class PinError(ValueError):
    """A pin refused: not cached, or beyond max_size. The message says which and what to do."""


class NotCached(PinError):
    """A pin of an image (or of the platforms asked) that is not cached, with no server to fetch it."""

    def __init__(self, target: Target, platforms: tuple[str, ...] | None = None) -> None:
        self.what = f"{target.text} ({', '.join(platforms)})" if platforms else target.text
        super().__init__(f"{self.what} is not cached: pull it (or `mirror prefetch` it) first, then pin it")


@dataclass(frozen=True)
class Pin:
    name: str  # docker.io/library/alpine:3.19
    digests: dict[str, int]  # digest -> declared size

    @property
    def size(self) -> int:
        return sum(self.digests.values())


def image_digests(cache: CacheDirectory, target: Target, platforms: tuple[str, ...] | None = None) -> dict[str, int]:
    """An image's digests with their declared sizes: what pinning it keeps. An index's children
    are those cached, or with `platforms` those of them, each of which must be cached. NotCached
    if not cached."""
    assert target.upstream is not None and target.repository is not None
    if target.is_digest:
        roots = {target.reference}
    else:
        entries = cache.metadata.tag(target.upstream, target.repository, target.reference)
        roots = {entry.digest for entry in entries.values()}
    roots = {root for root in roots if cache.read_json(root) is not None}
    if not roots:
        raise NotCached(target)
    found: dict[str, int] = {}
    pending = list(roots)
    missing = set(platforms or ())  # platforms asked of an index, not yet found cached
    indexes = 0
    while pending:
        digest = pending.pop()
        manifest = cache.read_json(digest) or {}
        found[digest] = cache.size(digest) or 0
        indexes += isinstance(manifest.get("manifests"), list)
        for descriptor in _descriptors(manifest):
            named = descriptor["digest"]
            platform = platform_name(descriptor.get("platform"))
            wanted = [w for w in platforms or () if platform_matches(platform, w)]
            if named in found or ("platform" in descriptor and platforms and not wanted):
                continue
            if cache.metadata.manifest(named) is not None:  # an index's child: its blobs too
                pending.append(named)
                missing.difference_update(wanted)
            else:
                found[named] = int(descriptor.get("size") or 0)
    if indexes and missing:
        raise NotCached(target, tuple(sorted(missing)))
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
        pins.append(Pin(pin_name(Target("", upstream, repository, reference)), digests))
    return pins


def pin_name(target: Target) -> str:
    """docker.io/library/alpine:3.19, or …@sha256:…: how a pin is named."""
    assert target.upstream is not None and target.repository is not None
    separator = "@" if target.is_digest else ":"
    return f"{target.upstream}/{target.repository}{separator}{target.reference}"


def pin(
    cache: CacheDirectory,
    targets: list[Target],
    max_size: int | None,
    others: list[Pin],
    platforms: tuple[str, ...] | None = None,
) -> list[Pin]:
    """Pin the targets as cached (recorded in the index); refused whole if all pins together exceed max_size."""
    made = [Pin(pin_name(target), image_digests(cache, target, platforms)) for target in targets]
    record(cache, list(zip(targets, made, strict=True)), max_size, others)
    return made


def record(cache: CacheDirectory, pins: list[tuple[Target, Pin]], max_size: int | None, others: list[Pin]) -> None:
    """Record pins in the index (a pin of the same name replaced); refused whole beyond max_size."""
    names = {made.name for _, made in pins}
    kept = [old for old in load_pins(cache) if old.name not in names]
    check_budget([*kept, *others, *(made for _, made in pins)], max_size)
    for target, made in pins:
        assert target.upstream is not None and target.repository is not None
        value = encode_pin(made.digests, time.time())
        cache.metadata.set_raw(pin_key(target.upstream, target.repository, target.reference), value)


def unpin(cache: CacheDirectory, targets: list[Target]) -> list[str]:
    """Forget pins; the names that were pinned."""
    gone = []
    for target in targets:
        assert target.upstream is not None and target.repository is not None
        if cache.metadata.delete_raw(pin_key(target.upstream, target.repository, target.reference)):
            gone.append(pin_name(target))
    return gone


def mark_fetching(cache: CacheDirectory, target: Target, digests: dict[str, int]) -> None:
    """Say that this server process is fetching this pin's digests (for `mirror ls`)."""
    assert target.upstream is not None and target.repository is not None
    key = pin_fetch_key(target.upstream, target.repository, target.reference)
    cache.metadata.set_raw(key, encode_pin_fetch(digests, time.time(), process_identity(os.getpid())))


def unmark_fetching(cache: CacheDirectory, target: Target) -> None:
    assert target.upstream is not None and target.repository is not None
    cache.metadata.delete_raw(pin_fetch_key(target.upstream, target.repository, target.reference))


def fetching_digests(cache: CacheDirectory) -> frozenset[str]:
    """The digests of the pins a server is fetching now: a mark left by a server that was killed
    mid-fetch is passed over (the next start clears it)."""
    return frozenset(
        digest
        for _, value in cache.metadata.items_of(PIN_FETCH)
        if _still_running(pin_fetch_server(value))
        for digest in decode_pin(value) or {}
    )


def process_identity(pid: int) -> str | None:
    """`pid:start time`, which no later process with the same PID shares; None without /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # after the command's name, which may hold anything
    return f"{pid}:{fields[19]}" if len(fields) > 19 else None


def _still_running(server: str | None) -> bool:
    """Whether the process a mark names is still the one that wrote it; a mark that names none
    (no /proc where it was written) is taken at its word."""
    if server is None:
        return True
    pid, _, _ = server.partition(":")
    return pid.isdigit() and process_identity(int(pid)) == server


def forget_fetching(cache: CacheDirectory) -> None:
    """At the server's start: no fetch of a pin is under way, whatever an earlier process left."""
    for parts, _ in list(cache.metadata.items_of(PIN_FETCH)):
        cache.metadata.delete_raw(pin_fetch_key(*parts))


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
