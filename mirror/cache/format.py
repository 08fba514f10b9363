"""The cache directory's format version: checked at every open, upgraded from older versions, newer ones refused.

Format 1 is what mirror wrote before the FORMAT file existed (up to 0223d2e): its metadata
keys were pickled tuples and its tag answers pickled `mirror.manifests.TagEntry` objects.
Those pickles are read here with an unpickler that knows exactly that one class, rewritten
as format 2's text keys and JSON values, and only then is FORMAT written: a crash midway
leaves a format-1 cache, and the next start does the upgrade again.

Format 3 adds each tag's journal (the digests it pointed to, and when): a format-2 cache gets
one per cached tag, from the answers it holds, before FORMAT says 3.
"""

from __future__ import annotations

import fcntl
import io
import logging
import os
import pickle
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import diskcache

from mirror.cache.layout import (
    FORMAT_VERSION,
    CacheLayout,
    ManifestRecord,
    Sighting,
    TagEntry,
    decode_tag_entries,
    encode_journal,
    encode_tag_entries,
    journal_key,
    manifest_key,
    read_key,
    tag_key,
)
from mirror.registry.errors import RegistryError
from mirror.registry.reference import parse_digest

log = logging.getLogger(__name__)

_MODE_RAW, _MODE_PICKLE = 1, 4  # diskcache's value modes


class CacheFormatError(Exception):
    """A cache directory this version cannot read; the message says what to do."""


def prepare(layout: CacheLayout) -> None:
    """Create a new cache, or check an existing one and upgrade it to FORMAT_VERSION.

    Under an exclusive lock, so that a server and a tool starting together upgrade once.
    Format-1 rows are looked for on every open, whatever FORMAT says: an older mirror still
    running when a newer tool upgraded the cache may have written some since.
    """
    layout.root.mkdir(parents=True, exist_ok=True)
    with _locked(layout):
        version = _read_version(layout)
        if version is None and (layout.meta.exists() or layout.blobs.exists()):
            version = 1
        if version is not None and version > FORMAT_VERSION:
            raise CacheFormatError(
                f"the cache in {layout.root} has format {version}, written by a newer mirror; this one reads "
                f"format {FORMAT_VERSION} and older. Run the newer mirror, or point [cache] directory elsewhere"
            )
        for directory in (layout.blobs, layout.tmp, layout.partial, layout.meta):
            directory.mkdir(parents=True, exist_ok=True)
        if version == 1 or _format_1_rows(layout):
            converted = _upgrade_from_1(layout)
            log.info(
                "cache %s: %d metadata entries upgraded from format 1 to %d", layout.root, converted, FORMAT_VERSION
            )
        if version is not None and version < 3:
            started = _journals_from_tags(layout)
            log.info(
                "cache %s: format %d to %d: %d tag journals started from the cached tags",
                layout.root,
                version,
                FORMAT_VERSION,
                started,
            )
        if version != FORMAT_VERSION:
            _write_version(layout)


@contextmanager
def _locked(layout: CacheLayout) -> Iterator[None]:
    try:
        fd = os.open(layout.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise CacheFormatError(f"cannot open the cache in {layout.root}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read_version(layout: CacheLayout) -> int | None:
    try:
        text = layout.format_file.read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CacheFormatError(f"cannot read {layout.format_file}: {exc.strerror}") from exc
    if not text.isascii() or not text.isdigit():
        raise CacheFormatError(f"{layout.format_file}: not a format version: {text[:40]!r}")
    return int(text)


def _write_version(layout: CacheLayout) -> None:
    """Atomically, durably, readable by whoever runs the server: never seen half-written."""
    fd, temp = tempfile.mkstemp(dir=layout.root, prefix=".FORMAT.")
    try:
        os.fchmod(fd, 0o644)
        os.write(fd, f"{FORMAT_VERSION}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, layout.format_file)
    directory = os.open(layout.root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


@dataclass
class _Format1TagEntry:
    """What format 1 pickled as `mirror.manifests.TagEntry`; filled in by unpickling."""

    digest: str = ""
    media_type: str = ""
    fetched_at: float = 0.0


class _Format1Unpickler(pickle.Unpickler):
    """Format 1's pickles hold tuples, dicts, strings, floats and that one class: nothing else loads."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("mirror.manifests", "TagEntry"):
            return _Format1TagEntry
        raise pickle.UnpicklingError(f"a format-1 cache holds no {module}.{name}")


def _unpickle(data: bytes) -> Any:
    return _Format1Unpickler(io.BytesIO(data)).load()


@dataclass
class _Format1Entries:
    media_types: dict[str, str] = field(default_factory=dict)
    tags: dict[tuple[str, str, str], dict[str, TagEntry]] = field(default_factory=dict)
    old_keys: list[Any] = field(default_factory=list)
    unreadable: list[tuple[int, str | None]] = field(default_factory=list)  # (rowid, value file)


def _database(layout: CacheLayout) -> sqlite3.Connection | None:
    database = layout.meta / "cache.db"  # diskcache's file
    return sqlite3.connect(database, timeout=30) if database.exists() else None


def _format_1_rows(layout: CacheLayout) -> bool:
    connection = _database(layout)
    if connection is None:
        return False
    try:
        return connection.execute("SELECT 1 FROM Cache WHERE raw = 0 LIMIT 1").fetchone() is not None
    except sqlite3.Error as exc:
        raise CacheFormatError(f"cannot read the cache's metadata in {layout.meta}: {exc}") from exc
    finally:
        connection.close()


def _read_format_1(layout: CacheLayout) -> _Format1Entries:
    found = _Format1Entries()
    connection = _database(layout)
    if connection is None:
        return found
    try:
        rows = connection.execute("SELECT rowid, key, mode, filename, value FROM Cache WHERE raw = 0").fetchall()
    except sqlite3.Error as exc:
        raise CacheFormatError(f"cannot read the cache's metadata in {layout.meta}: {exc}") from exc
    finally:
        connection.close()
    for rowid, key_data, mode, filename, value in rows:
        try:
            key = _unpickle(bytes(key_data))
            if mode == _MODE_PICKLE:
                value = _unpickle((layout.meta / filename).read_bytes() if filename else bytes(value))
        except (pickle.UnpicklingError, OSError, EOFError, ValueError, TypeError, AttributeError) as exc:
            log.warning("cache %s: dropping a format-1 metadata row it cannot read (%s)", layout.root, exc)
            found.unreadable.append((rowid, filename))
            continue
        found.old_keys.append(key)
        if not isinstance(key, tuple) or mode not in (_MODE_RAW, _MODE_PICKLE):
            continue
        if len(key) == 2 and key[0] == "manifest" and isinstance(value, str):
            found.media_types[str(key[1])] = value
        elif len(key) == 4 and key[0] == "tag" and isinstance(value, dict):
            found.tags[(str(key[1]), str(key[2]), str(key[3]))] = {
                str(accept): TagEntry(entry.digest, entry.media_type, float(entry.fetched_at))
                for accept, entry in value.items()
                if isinstance(entry, _Format1TagEntry)
            }
    return found


def _journals_from_tags(layout: CacheLayout) -> int:
    """Format 2 to 3: each cached tag's journal, from the answers it holds (one per Accept class)."""
    started = 0
    with diskcache.Cache(str(layout.meta)) as db, db.transact():
        for key in list(db.iterkeys()):
            parts = read_key(key)
            if parts is None or len(parts) != 4 or parts[0] != "tag":
                continue
            journal = journal_key(*parts[1:])
            if db.get(journal) is not None:
                continue  # a journal of its own already (a newer mirror wrote it)
            seen: dict[str, Sighting] = {}
            for entry in decode_tag_entries(db.get(key)).values():
                old = seen.get(entry.digest)
                first = min(entry.fetched_at, old.first_seen) if old else entry.fetched_at
                last = max(entry.fetched_at, old.last_seen) if old else entry.fetched_at
                seen[entry.digest] = Sighting(entry.digest, first, last)
            if seen:
                db.set(journal, encode_journal(sorted(seen.values(), key=lambda s: s.first_seen)))
                started += 1
    return started


def _upgrade_from_1(layout: CacheLayout) -> int:
    old = _read_format_1(layout)
    with diskcache.Cache(str(layout.meta)) as db, db.transact():
        for digest, media_type in old.media_types.items():
            try:
                body = layout.blob_path(parse_digest(digest)).read_bytes()
            except (OSError, RegistryError):
                body = b""  # evicted: the record keeps its media type, without a config
            db.set(manifest_key(digest), ManifestRecord.of(media_type, body).encode())
        for (upstream, repository, tag), entries in old.tags.items():
            db.set(tag_key(upstream, repository, tag), encode_tag_entries(entries))
        for key in old.old_keys:
            db.delete(key)
    connection = _database(layout)
    if connection is not None:
        try:
            for rowid, filename in old.unreadable:
                connection.execute("DELETE FROM Cache WHERE rowid = ?", (rowid,))
                if filename:
                    (layout.meta / filename).unlink(missing_ok=True)
            connection.commit()
            # Into the database file before FORMAT says 2: a power cut must not undo one and not the other.
            connection.execute("PRAGMA wal_checkpoint(FULL)")
        finally:
            connection.close()
    return len(old.media_types) + len(old.tags)
