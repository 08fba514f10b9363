"""The metadata index: manifests' media types and tags' answers, in diskcache (SQLite), keyed as layout says.

Synchronous: the server calls it through a thread, the command-line tools directly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

import diskcache

from mirror.cache.layout import (
    JOURNAL,
    CacheLayout,
    KeptList,
    ManifestRecord,
    Sighting,
    TagEntry,
    decode_journal,
    decode_tag_entries,
    encode_journal,
    encode_tag_entries,
    journal_key,
    link_key,
    manifest_key,
    read_key,
    tag_key,
)

TagEntries = dict[str, TagEntry]  # accept key -> answer


def json_time() -> str:
    return str(round(time.time(), 3))


class MetadataIndex:
    def __init__(self, layout: CacheLayout) -> None:
        self._db = diskcache.Cache(str(layout.meta))

    def close(self) -> None:
        self._db.close()

    def manifest(self, digest: str) -> ManifestRecord | None:
        return ManifestRecord.decode(self._db.get(manifest_key(digest)))

    def media_type(self, digest: str) -> str | None:
        record = self.manifest(digest)
        return record.media_type if record is not None else None

    def set_manifest(self, digest: str, record: ManifestRecord) -> None:
        self._db.set(manifest_key(digest), record.encode())

    def forget_manifest(self, digest: str) -> None:
        self._db.delete(manifest_key(digest))

    def tag(self, upstream: str, repository: str, tag: str) -> TagEntries:
        return decode_tag_entries(self._db.get(tag_key(upstream, repository, tag)))

    def set_tag(self, upstream: str, repository: str, tag: str, entries: TagEntries) -> None:
        self._db.set(tag_key(upstream, repository, tag), encode_tag_entries(entries))

    def update_tag(self, upstream: str, repository: str, tag: str, change: Callable[[TagEntries], TagEntries]) -> None:
        """Read, change and write a tag's answers in one transaction (another process may write too)."""
        with self._db.transact():
            self.set_tag(upstream, repository, tag, change(self.tag(upstream, repository, tag)))

    def forget_tag_if(self, upstream: str, repository: str, tag: str, condition: Callable[[TagEntries], bool]) -> bool:
        """Delete a tag if its answers, read in the same transaction, meet the condition."""
        with self._db.transact():
            if not condition(self.tag(upstream, repository, tag)):
                return False
            self._db.delete(tag_key(upstream, repository, tag))
            return True

    def journal(self, upstream: str, repository: str, tag: str) -> list[Sighting]:
        return decode_journal(self._db.get(journal_key(upstream, repository, tag)))

    def update_journal(
        self, upstream: str, repository: str, tag: str, change: Callable[[list[Sighting]], list[Sighting]]
    ) -> None:
        """Read, change and write a tag's journal in one transaction (another process may write too)."""
        key = journal_key(upstream, repository, tag)
        with self._db.transact():
            self._db.set(key, encode_journal(change(decode_journal(self._db.get(key)))))

    def journals(self) -> Iterator[tuple[str, str, str, list[Sighting]]]:
        """(upstream, repository, tag, sightings) of every tag's journal."""
        for parts, value in self.items_of(JOURNAL):
            if len(parts) == 3:
                yield parts[0], parts[1], parts[2], decode_journal(value)

    def link(self, upstream: str, repository: str, digests: Iterable[str]) -> None:
        """Record that these digests may be served under the repository."""
        now = json_time()
        with self._db.transact():
            for digest in digests:
                self._db.set(link_key(upstream, repository, digest), now)

    def linked(self, upstream: str, repository: str, digest: str) -> bool:
        return link_key(upstream, repository, digest) in self._db

    def unlink(self, digests: set[str]) -> int:
        """Forget every link to these digests (they were removed); how many there were.

        One walk over the keys for all of them: a link is keyed by repository first."""
        removed = 0
        if not digests:
            return removed
        for key in list(self._db.iterkeys()):
            parts = read_key(key)
            if parts is not None and len(parts) == 4 and parts[0] == "link" and parts[3] in digests:
                removed += bool(self._db.delete(key))
        return removed

    def items_of(self, kind: str) -> Iterator[tuple[list[str], str]]:
        """(the key's parts after the kind, the value) of every key of a kind (layout's keys)."""
        for key in list(self._db.iterkeys()):
            parts = read_key(key)
            if parts is not None and parts[0] == kind:
                value = self._db.get(key)
                if isinstance(value, str):
                    yield parts[1:], value

    def raw(self, key: str) -> str | None:
        value = self._db.get(key)
        return value if isinstance(value, str) else None

    def set_raw(self, key: str, value: str) -> None:
        self._db.set(key, value)

    def delete_raw(self, key: str) -> bool:
        return bool(self._db.delete(key))

    def kept_list(self, key: str) -> KeptList | None:
        """A list answer by its key (layout's taglist_key, referrers_key)."""
        return KeptList.decode(self._db.get(key))

    def set_kept_list(self, key: str, kept: KeptList) -> None:
        self._db.set(key, kept.encode())

    def repositories(self) -> set[tuple[str, str]]:
        """(upstream, repository) of every repository with a cached tag or tag list."""
        found = set()
        for key in list(self._db.iterkeys()):
            parts = read_key(key)
            if parts is not None and parts[0] in ("tag", "taglist", "referrers") and len(parts) >= 3:
                found.add((parts[1], parts[2]))
        return found

    def tags(self) -> Iterator[tuple[str, str, str, TagEntries]]:
        """(upstream, repository, tag, answers) of every cached tag."""
        for key in list(self._db.iterkeys()):
            parts = read_key(key)
            if parts is not None and len(parts) == 4 and parts[0] == "tag":
                yield parts[1], parts[2], parts[3], decode_tag_entries(self._db.get(key))

    def manifests(self) -> Iterator[tuple[str, ManifestRecord]]:
        """(digest, record) of every manifest recorded."""
        for key in list(self._db.iterkeys()):
            parts = read_key(key)
            if parts is not None and len(parts) == 2 and parts[0] == "manifest":
                record = ManifestRecord.decode(self._db.get(key))
                if record is not None:
                    yield parts[1], record
