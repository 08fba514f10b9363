"""Tag answers shared by the fleet: in Redis (JSON), so the whole fleet revalidates a tag once
per tag_ttl; each replica keeps its own copy too, for when Redis fails."""

from __future__ import annotations

import json
from collections.abc import Callable

from mirror.cache.index import TagEntries
from mirror.cache.layout import TagEntry
from mirror.cache.tags import LocalTagStore
from mirror.fleet import keys
from mirror.fleet.coordinator import Fleet


class FleetTagStore:
    """A TagStore: the fleet's answers in Redis, over this replica's own."""

    def __init__(self, local: LocalTagStore, fleet: Fleet) -> None:
        self.local = local
        self.fleet = fleet

    def tag_entries_in_memory(self, upstream: str, repository: str, tag: str) -> TagEntries | None:
        return self.local.tag_entries_in_memory(upstream, repository, tag)

    async def tag_entries(self, upstream: str, repository: str, tag: str, reload: bool = False) -> TagEntries:
        entries = await self.local.tag_entries(upstream, repository, tag, reload)
        if not reload:
            return entries
        shared = await self.fleet.get_hash(keys.tag(upstream, repository, tag))
        if not shared:
            return entries  # Redis cannot say, or the fleet has none: ours
        merged = dict(entries)
        for accept, text in shared.items():
            try:
                entry = TagEntry.from_json(json.loads(text))
            except ValueError:
                entry = None
            if entry is not None and (accept not in merged or merged[accept].fetched_at < entry.fetched_at):
                merged[accept] = entry
        self.local.remember(upstream, repository, tag, merged)
        return merged

    async def set_tag(self, upstream: str, repository: str, tag: str, accept: str, entry: TagEntry) -> None:
        await self.local.set_tag(upstream, repository, tag, accept, entry)
        await self.fleet.set_hash_field(keys.tag(upstream, repository, tag), accept, json.dumps(entry.to_json()))

    async def forget_tags_older_than(self, age: float, in_use: Callable[[str], bool]) -> int:
        return await self.local.forget_tags_older_than(age, in_use)

    async def forget_tag(self, upstream: str, repository: str, tag: str) -> bool:
        """Out of Redis too, or the fleet's answer comes back at the next reload."""
        await self.fleet.delete(keys.tag(upstream, repository, tag))
        return await self.local.forget_tag(upstream, repository, tag)

    def forget_in_memory(self, upstream: str, repository: str, tag: str) -> None:
        self.local.forget_in_memory(upstream, repository, tag)
