"""Tag answers shared by the fleet: in Redis (JSON), so the whole fleet revalidates a tag once
per tag_ttl; each replica keeps its own copy too, for when Redis fails."""

from __future__ import annotations

import json
from collections.abc import Callable

from mirror.cache.index import TagEntries
from mirror.cache.layout import TagEntry
from mirror.cache.tags import LocalTagStore
from mirror.fleet.coordinator import Fleet


def _key(upstream: str, repository: str, tag: str) -> str:
    return f"tag:{upstream}/{repository}:{tag}"


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
        shared = await self.fleet.get_hash(_key(upstream, repository, tag))
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
        await self.fleet.set_hash_field(_key(upstream, repository, tag), accept, json.dumps(entry.to_json()))

    async def claim_refresh(self, upstream: str, repository: str, tag: str, seconds: float) -> bool:
        """Whether this replica revalidates the tag now: one replica per tag per tag_ttl, fleet-wide."""
        return await self.fleet.claim(f"refresh:{upstream}/{repository}:{tag}", seconds)

    async def claim_fetch(self, digest: str, seconds: float) -> bool:
        """Whether this replica fetches a manifest by digest now: one replica at a time, fleet-wide."""
        return await self.fleet.claim(f"fetch:{digest}", seconds)

    async def share_manifest(self, digest: str, media_type: str, body: bytes) -> None:
        """A tag's manifest, for the replicas that get the tag's answer from Redis and do not hold it."""
        try:
            text = body.decode()
        except UnicodeDecodeError:
            return  # manifests are JSON; a replica without it asks the upstream by digest
        await self.fleet.set_once(f"manifest:{digest}", json.dumps({"media_type": media_type, "body": text}))

    async def shared_manifest(self, digest: str) -> tuple[str, bytes] | None:
        text = await self.fleet.get(f"manifest:{digest}")
        try:
            data = json.loads(text) if text else None
            return (str(data["media_type"]), str(data["body"]).encode()) if isinstance(data, dict) else None
        except (ValueError, KeyError):
            return None

    async def forget_tags_older_than(self, age: float, in_use: Callable[[str], bool]) -> int:
        return await self.local.forget_tags_older_than(age, in_use)

    def forget_in_memory(self, upstream: str, repository: str, tag: str) -> None:
        self.local.forget_in_memory(upstream, repository, tag)
