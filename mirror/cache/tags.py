"""Tags: which manifest a tag names, per upstream and repository, and since when. The first tag store.

`TagStore` is the seam: the proxy asks it for a tag's cached answers and records new ones.
`LocalTagStore`, today's only implementation, keeps them in this replica's metadata index with
an LRU in memory in front; a fleet of replicas can put a shared store behind the same interface.
"""

from __future__ import annotations

import time
from typing import Protocol

import anyio.to_thread
from cachetools import LRUCache

from mirror.cache.index import MetadataIndex, TagEntries
from mirror.cache.layout import TagEntry


class TagStore(Protocol):
    """A tag's cached answers (accept key -> entry): read, with and without I/O, and written."""

    def tag_entries_in_memory(self, upstream: str, repository: str, tag: str) -> TagEntries | None: ...

    async def tag_entries(self, upstream: str, repository: str, tag: str, reload: bool = False) -> TagEntries: ...

    async def set_tag(self, upstream: str, repository: str, tag: str, accept: str, entry: TagEntry) -> None: ...

    async def forget_tags_older_than(self, age: float) -> int: ...


class LocalTagStore:
    """Tags in this cache's metadata index, the recent ones also in memory."""

    def __init__(self, index: MetadataIndex) -> None:
        self._index = index
        self._tags: LRUCache[tuple[str, str, str], TagEntries] = LRUCache(maxsize=100_000)

    def tag_entries_in_memory(self, upstream: str, repository: str, tag: str) -> TagEntries | None:
        return self._tags.get((upstream, repository, tag))

    async def tag_entries(self, upstream: str, repository: str, tag: str, reload: bool = False) -> dict[str, TagEntry]:
        """A tag's cached answers; `reload` rereads them (`mirror import` may have changed them meanwhile)."""
        key = (upstream, repository, tag)
        entries = self._tags.get(key)
        if entries is None or reload:
            entries = await anyio.to_thread.run_sync(self._index.tag, *key)
            self._tags[key] = entries
        return entries

    async def set_tag(self, upstream: str, repository: str, tag: str, accept: str, entry: TagEntry) -> None:
        entries = dict(await self.tag_entries(upstream, repository, tag))
        entries[accept] = entry
        self._tags[(upstream, repository, tag)] = entries
        await anyio.to_thread.run_sync(self._index.set_tag, upstream, repository, tag, entries)

    async def forget_tags_older_than(self, age: float) -> int:
        """Drop tags nobody pulled (nor revalidated) for `age` seconds; their manifests then age like any blob."""
        cutoff = time.time() - age

        def stale() -> list[tuple[str, str, str]]:
            return [
                (upstream, repository, tag)
                for upstream, repository, tag, entries in self._index.tags()
                if all(entry.fetched_at < cutoff for entry in entries.values())
            ]

        gone = await anyio.to_thread.run_sync(stale)
        for key in gone:
            await anyio.to_thread.run_sync(self._index.forget_tag, *key)
            self._tags.pop(key, None)
        return len(gone)
