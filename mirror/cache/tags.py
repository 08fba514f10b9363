"""Tags: which manifest a tag names, per upstream and repository, and since when.

`TagStore` is the interface: the proxy asks it for a tag's cached answers and records new ones.
`LocalTagStore` keeps them in this replica's metadata index with an LRU in memory in front;
`mirror.fleet.tags.FleetTagStore` puts the fleet's answers in Redis over it. Who revalidates a
tag is not the store's question: that is `mirror.proxy.coordination`'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable
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

    async def forget_tags_older_than(self, age: float, in_use: Callable[[str], bool]) -> int: ...

    def forget_in_memory(self, upstream: str, repository: str, tag: str) -> None: ...

    async def forget_tag(self, upstream: str, repository: str, tag: str) -> bool: ...


class LocalTagStore:
    """Tags in this cache's metadata index, the recent ones also in memory."""

    def __init__(self, index: MetadataIndex) -> None:
        self._index = index
        self._tags: LRUCache[tuple[str, str, str], TagEntries] = LRUCache(maxsize=100_000)

    def tag_entries_in_memory(self, upstream: str, repository: str, tag: str) -> TagEntries | None:
        return self._tags.get((upstream, repository, tag))

    async def tag_entries(self, upstream: str, repository: str, tag: str, reload: bool = False) -> TagEntries:
        """A tag's cached answers; `reload` rereads them (`mirror import` may have changed them meanwhile)."""
        key = (upstream, repository, tag)
        entries = self._tags.get(key)
        if entries is None or reload:
            entries = await anyio.to_thread.run_sync(self._index.tag, *key)
            self._tags[key] = entries
        return entries

    async def set_tag(self, upstream: str, repository: str, tag: str, accept: str, entry: TagEntry) -> None:
        """Record one answer, keeping the others: read and written in one transaction (`mirror import` writes too)."""
        stored: TagEntries = {}

        def merge(entries: TagEntries) -> TagEntries:
            stored.update(entries)
            stored[accept] = entry
            return stored

        await anyio.to_thread.run_sync(self._index.update_tag, upstream, repository, tag, merge)
        self._tags[(upstream, repository, tag)] = stored

    def forget_in_memory(self, upstream: str, repository: str, tag: str) -> None:
        """After `mirror rm` took the tag out of the index: not answered from memory either."""
        self._tags.pop((upstream, repository, tag), None)

    async def forget_tag(self, upstream: str, repository: str, tag: str) -> bool:
        """Drop a tag's answers (`mirror tag accept`): the next request takes the upstream's; True if any."""
        self._tags.pop((upstream, repository, tag), None)
        return await anyio.to_thread.run_sync(self._index.forget_tag_if, upstream, repository, tag, lambda _: True)

    def remember(self, upstream: str, repository: str, tag: str, entries: TagEntries) -> None:
        """Answers learnt elsewhere (the fleet's), for the memory of this replica."""
        self._tags[(upstream, repository, tag)] = entries

    async def forget_tags_older_than(self, age: float, in_use: Callable[[str], bool]) -> int:
        """Drop tags nobody pulled for `age` seconds: not fetched, revalidated, nor served (`in_use(digest)`).

        A tag served STALE through a long upstream outage is in use, and stays.
        """
        cutoff = time.time() - age

        def stale(entries: TagEntries) -> bool:
            return all(entry.fetched_at < cutoff and not in_use(entry.digest) for entry in entries.values())

        candidates = await anyio.to_thread.run_sync(
            lambda: [(u, r, t) for u, r, t, entries in self._index.tags() if stale(entries)]
        )
        gone = 0
        for key in candidates:
            # Checked again inside the transaction: a pull or an import may have renewed it meanwhile.
            if await anyio.to_thread.run_sync(self._index.forget_tag_if, *key, stale):
                self._tags.pop(key, None)
                gone += 1
        return gone
