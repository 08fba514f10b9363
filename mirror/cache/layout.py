"""The cache directory's on-disk format: where every file lives, how metadata is keyed and encoded.

This module is the one owner of that format (version 3)::

    <root>/FORMAT                         the format version, "3"
    <root>/blobs/<alg>/<2 hex>/<hex>      blob and manifest bytes, complete and verified
    <root>/tmp/                           small writes under way (manifests, imports), swept at start-up
    <root>/partial/<alg>/<hex>            downloads under way, kept across a restart and resumed
    <root>/partial/<alg>/<hex>.ranges     which byte ranges of it are written, as JSON [[start, end], …],
                                          when not just a prefix (a download in parallel ranges)
    <root>/meta/                          diskcache (SQLite) with text keys and JSON text values:
        ["manifest", digest]              -> {"media_type", "config": the image config's digest or null}
        ["tag", upstream, repository, tag] -> {accept key: {"digest", "media_type", "fetched_at"}}
        ["taglist", upstream, repository] -> {"items": [tag, …] in lexical order, "fetched_at"}
        ["referrers", upstream, repository, digest] -> {"items": [descriptor, …], "fetched_at"}
        ["link", upstream, repository, digest] -> seconds since the epoch when linked: the blob or
                                          manifest may be served under that repository (a manifest
                                          of it, fetched by the mirror or imported, referenced it)
        ["pin", upstream, repository, reference] -> {"digests": {digest: size}, "pinned_at"}: an image
                                          the user pinned (`mirror pin`, `mirror import`), with the
                                          digests it had then; never evicted (`mirror.cache.pins`)
        ["pinfetch", upstream, repository, reference] -> {"digests": {digest: size}, "pinned_at"}: a
                                          pin (`mirror pin`, `[[pin]]`) the server is fetching now,
                                          since pinned_at, for `mirror ls`; gone when done, and at
                                          the server's start
        ["journal", upstream, repository, tag] -> [{"digest", "first_seen", "last_seen"}, …]: every
                                          digest the tag pointed to, oldest first, at most
                                          JOURNAL_KEPT (`mirror.cache.journal`); new in format 3
        ["verdict", upstream, repository, digest] -> {"accepted", "signed", "reason", "scope",
                                          "policy", "mode", "at"}: the signature policy's last
                                          verdict on a manifest, for `mirror ls` and the dashboard
                                          (`mirror.cache.verdicts`); enforcement decides anew

Keys and values are plain text, never pickles of our classes, so moving a module can never
make a cache unreadable. Format 1 (no FORMAT file; pickled tuples and `TagEntry` objects)
is upgraded by `mirror.cache.format`, and format 2 (no journal) gets one from its tags.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mirror.registry.errors import RegistryError
from mirror.registry.reference import Digest, parse_digest

FORMAT_VERSION = 3

# Digests kept per tag in its journal: the oldest go first (a tag that moves hourly keeps four days).
JOURNAL_KEPT = 100


@dataclass(frozen=True, slots=True)
class TagEntry:
    """One cached answer for a tag: which manifest, of which type, fetched (or revalidated) when."""

    digest: str
    media_type: str
    fetched_at: float
    imported: bool = False  # from `mirror import`, at fetched_at: never pulled from the upstream yet

    def to_json(self) -> dict[str, Any]:
        data = {"digest": self.digest, "media_type": self.media_type, "fetched_at": self.fetched_at}
        return {**data, "imported": True} if self.imported else data

    @classmethod
    def from_json(cls, data: object) -> TagEntry | None:
        if not isinstance(data, dict):
            return None
        digest, media_type, fetched_at = data.get("digest"), data.get("media_type"), data.get("fetched_at")
        if not (isinstance(digest, str) and isinstance(media_type, str) and isinstance(fetched_at, int | float)):
            return None
        if not 0 <= fetched_at < 1e11:  # NaN and absurd times too: time.gmtime would raise on them
            return None
        try:
            parse_digest(digest)
        except RegistryError:
            return None
        return cls(digest, media_type, float(fetched_at), data.get("imported") is True)


class CacheLayout:
    """The paths of one cache directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.tmp = root / "tmp"
        self.partial = root / "partial"
        self.meta = root / "meta"
        self.format_file = root / "FORMAT"

    def blob_path(self, digest: Digest) -> Path:
        return self.blobs / digest.algorithm / digest.hex[:2] / digest.hex

    def partial_path(self, digest: Digest) -> Path:
        """Where a download of `digest` writes until its digest matched: never a blob path."""
        return self.partial / digest.algorithm / digest.hex

    def partial_ranges_path(self, digest: Digest) -> Path:
        """The ranges a partial download holds; without this file, it holds the prefix its size says."""
        return self.partial / digest.algorithm / f"{digest.hex}.ranges"

    def blob_files(self) -> Iterator[tuple[str, Path]]:
        """(`algorithm:name`, path) of every file under blobs/, well-named or not."""
        if self.blobs.is_dir():
            for path in self.blobs.glob("*/*/*"):
                yield f"{path.parent.parent.name}:{path.name}", path

    def misplaced(self, digest: Digest, path: Path) -> bool:
        """Whether a file found under blobs/ is not where its name says it belongs."""
        return path != self.blob_path(digest)


def manifest_key(digest: str) -> str:
    return json.dumps(["manifest", digest])


def tag_key(upstream: str, repository: str, tag: str) -> str:
    return json.dumps(["tag", upstream, repository, tag])


def link_key(upstream: str, repository: str, digest: str) -> str:
    return json.dumps(["link", upstream, repository, digest])


def taglist_key(upstream: str, repository: str) -> str:
    return json.dumps(["taglist", upstream, repository])


def referrers_key(upstream: str, repository: str, digest: str) -> str:
    return json.dumps(["referrers", upstream, repository, digest])


JOURNAL = "journal"  # the kind of a journal's key
VERDICT = "verdict"  # the kind of a verdict's key


def verdict_key(upstream: str, repository: str, digest: str) -> str:
    return json.dumps([VERDICT, upstream, repository, digest])


def journal_key(upstream: str, repository: str, tag: str) -> str:
    return json.dumps([JOURNAL, upstream, repository, tag])


@dataclass(frozen=True, slots=True)
class Sighting:
    """One digest a tag pointed to, from when the mirror first saw it there to when it last did."""

    digest: str
    first_seen: float
    last_seen: float

    def to_json(self) -> dict[str, Any]:
        return {"digest": self.digest, "first_seen": self.first_seen, "last_seen": self.last_seen}

    @classmethod
    def from_json(cls, data: object) -> Sighting | None:
        if not isinstance(data, dict):
            return None
        digest, first, last = data.get("digest"), data.get("first_seen"), data.get("last_seen")
        if not (isinstance(digest, str) and isinstance(first, int | float) and isinstance(last, int | float)):
            return None
        if not (0 <= first <= last < 1e11):
            return None
        try:
            parse_digest(digest)
        except RegistryError:
            return None
        return cls(digest, float(first), float(last))


def encode_journal(sightings: list[Sighting]) -> str:
    return json.dumps([s.to_json() for s in sightings[-JOURNAL_KEPT:]])


def decode_journal(text: object) -> list[Sighting]:
    """A tag's sightings, oldest first; what does not read as one is left out."""
    try:
        data = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return []
    if not isinstance(data, list):
        return []
    return [s for s in (Sighting.from_json(item) for item in data) if s is not None]


PIN = "pin"  # the kind of a pin's key, as `MetadataIndex.items_of` lists them


def pin_key(upstream: str, repository: str, reference: str) -> str:
    return json.dumps([PIN, upstream, repository, reference])


def encode_pin(digests: dict[str, int], pinned_at: float) -> str:
    return json.dumps({"digests": digests, "pinned_at": round(pinned_at, 3)})


def decode_pin(text: str) -> dict[str, int] | None:
    """A pin's digests with their declared sizes; None if the value is not a pin's."""
    try:
        data = json.loads(text)
        return {str(d): int(s) for d, s in data["digests"].items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


PIN_FETCH = "pinfetch"  # a pin being fetched (its value a pin's, with the fetching server's identity)


def encode_pin_fetch(digests: dict[str, int], started_at: float, server: str | None) -> str:
    return json.dumps({"digests": digests, "pinned_at": round(started_at, 3), "server": server})


def pin_fetch_server(text: str) -> str | None:
    """The identity of the server process fetching a pin (`mirror.cache.pins`), if it says."""
    try:
        server = json.loads(text).get("server")
    except (ValueError, AttributeError):
        return None
    return server if isinstance(server, str) else None


def pin_fetch_key(upstream: str, repository: str, reference: str) -> str:
    return json.dumps([PIN_FETCH, upstream, repository, reference])


@dataclass(frozen=True)
class KeptList:
    """A list answer as the upstream last gave it (a repository's tags, a digest's referrers), and when."""

    items: tuple[Any, ...]
    fetched_at: float

    def encode(self) -> str:
        return json.dumps({"items": list(self.items), "fetched_at": self.fetched_at})

    @classmethod
    def decode(cls, text: object) -> KeptList | None:
        try:
            data = json.loads(text) if isinstance(text, str) else None
        except ValueError:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("items"), list):
            return None
        fetched_at = data.get("fetched_at")
        if not isinstance(fetched_at, int | float):
            return None
        return cls(tuple(data["items"]), float(fetched_at))


def read_key(key: object) -> list[str] | None:
    """The parts of a metadata key: ["manifest", digest] or ["tag", upstream, repository, tag]."""
    if not isinstance(key, str) or not key.startswith("["):
        return None
    try:
        parts = json.loads(key)
    except ValueError:
        return None
    return parts if isinstance(parts, list) and all(isinstance(p, str) for p in parts) else None


def encode_tag_entries(entries: dict[str, TagEntry]) -> str:
    return json.dumps({accept: entry.to_json() for accept, entry in entries.items()}, sort_keys=True)


def decode_tag_entries(text: object) -> dict[str, TagEntry]:
    try:
        data = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    entries = {accept: TagEntry.from_json(value) for accept, value in data.items()}
    return {accept: entry for accept, entry in entries.items() if entry is not None}


@dataclass(frozen=True, slots=True)
class ManifestRecord:
    """What the index keeps of a manifest: its media type, and its image config (the inventory's platform)."""

    media_type: str
    config: str | None

    @classmethod
    def of(cls, media_type: str, body: bytes) -> ManifestRecord:
        try:
            manifest = json.loads(body)
        except ValueError:
            manifest = None
        config = manifest.get("config") if isinstance(manifest, dict) else None
        digest = config.get("digest") if isinstance(config, dict) else None
        return cls(media_type, digest if isinstance(digest, str) else None)

    def encode(self) -> str:
        return json.dumps({"media_type": self.media_type, "config": self.config})

    @classmethod
    def decode(cls, text: object) -> ManifestRecord | None:
        try:
            data = json.loads(text) if isinstance(text, str) else None
        except ValueError:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("media_type"), str):
            return None
        config = data.get("config")
        return cls(data["media_type"], config if isinstance(config, str) else None)
