"""Blob links: which blobs and manifests may be served under which repository.

distribution links every blob to the repositories it was pushed or pulled through, so that a
digest cannot be read through a name it does not belong to. The mirror does the same: a
manifest it fetched (or imported) for a repository links that manifest and everything it
names to the repository.
"""

from __future__ import annotations

import json

import anyio.to_thread
from cachetools import LRUCache

from mirror.cache.index import MetadataIndex
from mirror.registry.mediatypes import required_digests

# Links remembered in memory (the rest are one index lookup away).
MEMORY = 200_000


class BlobLinks:
    def __init__(self, index: MetadataIndex) -> None:
        self._index = index
        self._known: LRUCache[tuple[str, str, str], bool] = LRUCache(MEMORY)
        self._expanded: LRUCache[tuple[str, str, str], bool] = LRUCache(MEMORY)  # manifests linked with what they name

    def linked_in_memory(self, upstream: str, repository: str, digest: str) -> bool:
        return (upstream, repository, digest) in self._known

    async def linked(self, upstream: str, repository: str, digest: str) -> bool:
        if self.linked_in_memory(upstream, repository, digest):
            return True
        found = await anyio.to_thread.run_sync(self._index.linked, upstream, repository, digest)
        if found:
            self._known[(upstream, repository, digest)] = True
        return found

    async def link(self, upstream: str, repository: str, digests: set[str]) -> None:
        new = {d for d in digests if (upstream, repository, d) not in self._known}
        if new:
            await anyio.to_thread.run_sync(self._index.link, upstream, repository, new)
            for digest in new:
                self._known[(upstream, repository, digest)] = True

    async def link_manifest(self, upstream: str, repository: str, digest: str, body: bytes) -> None:
        """Link a manifest and what it names to the repository it was fetched for."""
        if (upstream, repository, digest) in self._expanded:
            return
        try:
            named = required_digests(json.loads(body))
        except ValueError:
            named = set()
        await self.link(upstream, repository, named | {digest})
        self._expanded[(upstream, repository, digest)] = True

    def forget(self, digest: str) -> None:
        for memory in (self._known, self._expanded):
            for key in [key for key in memory if key[2] == digest]:
                del memory[key]
