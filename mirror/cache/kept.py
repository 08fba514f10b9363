"""List answers kept for tag_ttl (tag lists, referrers): in memory, and in the index for restarts."""

from __future__ import annotations

import time
from typing import Any

import anyio.to_thread
from cachetools import LRUCache

from mirror.cache.index import MetadataIndex
from mirror.cache.layout import KeptList

# List answers held in memory; the index holds them all.
MEMORY_LISTS = 1024


class KeptLists:
    """By key, as `mirror.cache.layout` spells them (taglist_key, referrers_key)."""

    def __init__(self, index: MetadataIndex) -> None:
        self._index = index
        self._memory: LRUCache[str, KeptList] = LRUCache(MEMORY_LISTS)

    async def get(self, key: str) -> KeptList | None:
        found = self._memory.get(key)
        if found is None:
            found = await anyio.to_thread.run_sync(self._index.kept_list, key)
            if found is not None:
                self._memory[key] = found
        return found

    def get_in_memory(self, key: str) -> KeptList | None:
        return self._memory.get(key)

    async def put(self, key: str, items: list[Any]) -> KeptList:
        kept = KeptList(tuple(items), time.time())
        self._memory[key] = kept
        await anyio.to_thread.run_sync(self._index.set_kept_list, key, kept)
        return kept
