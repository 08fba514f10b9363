"""Repositories' whole tag lists, as the upstream last gave them: in memory, and in the index for restarts."""

from __future__ import annotations

import time

import anyio.to_thread
from cachetools import LRUCache

from mirror.cache.index import MetadataIndex
from mirror.cache.layout import TagList
from mirror.registry.paging import lexical

# Tag lists held in memory; the index holds them all.
MEMORY_LISTS = 1024


class TagListStore:
    def __init__(self, index: MetadataIndex) -> None:
        self._index = index
        self._memory: LRUCache[tuple[str, str], TagList] = LRUCache(MEMORY_LISTS)

    async def get(self, upstream: str, repository: str) -> TagList | None:
        key = (upstream, repository)
        found = self._memory.get(key)
        if found is None:
            found = await anyio.to_thread.run_sync(self._index.tag_list, upstream, repository)
            if found is not None:
                self._memory[key] = found
        return found

    def get_in_memory(self, upstream: str, repository: str) -> TagList | None:
        return self._memory.get((upstream, repository))

    async def put(self, upstream: str, repository: str, tags: list[str]) -> TagList:
        """Keep a freshly fetched list, sorted in the spec's order."""
        tag_list = TagList(tuple(sorted(set(tags), key=lexical)), time.time())
        self._memory[(upstream, repository)] = tag_list
        await anyio.to_thread.run_sync(self._index.set_tag_list, upstream, repository, tag_list)
        return tag_list
