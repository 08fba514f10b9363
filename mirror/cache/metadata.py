"""Manifest metadata and tags: immutable manifests by digest, tags with a fetch time.

Manifest bytes live in the blob store (content-addressed like blobs); their media types and
the tag → digest mappings live in diskcache, with small in-memory LRUs in front so that a
warm tag resolution touches neither SQLite nor the disk.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass

import anyio.to_thread
from cachetools import LRUCache

from mirror.cache.blobs import BlobStore
from mirror.cache.index import MetadataIndex
from mirror.cache.layout import ManifestRecord
from mirror.registry.errors import RegistryError
from mirror.registry.mediatypes import INDEX_TYPES, accept_key
from mirror.registry.reference import Digest, parse_digest

_MEMORY_BYTES = 64 * 1024 * 1024


def same_answer(entry_accept: str, media_type: str, accepted: frozenset[str]) -> bool:
    """Whether the upstream would answer a client with `accepted` as it answered `entry_accept`.

    Registries only change their answer by Accept when the tag is an index the client cannot
    read. So an answer is shared when the new client names its type and either it is an
    index, or the new client accepts no index type the first one did not.
    """
    if entry_accept == accept_key(accepted):
        return True
    if media_type not in accepted:
        return False
    first = frozenset(entry_accept.split(",")) if entry_accept else frozenset()
    return media_type in INDEX_TYPES or (accepted & INDEX_TYPES) <= first


@dataclass(frozen=True, slots=True)
class Manifest:
    digest: str
    media_type: str
    body: bytes


def manifest_digest(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


class ManifestCache:
    """Manifests and tags as the proxy needs them: memory first, then the metadata index and blob files."""

    def __init__(self, index: MetadataIndex, store: BlobStore) -> None:
        self.store = store
        self.index = index
        self._media_types: LRUCache[str, str] = LRUCache(maxsize=100_000)
        # Manifests held whole in memory (with their blob's Digest), the answers to warm requests.
        self._held: LRUCache[str, tuple[Manifest, Digest]] = LRUCache(
            maxsize=_MEMORY_BYTES, getsizeof=lambda held: len(held[0].body)
        )

    def load_inventory(self) -> None:
        """Every recorded manifest and its config into the inventory, so that making room takes layers first."""
        for digest, record in self.index.manifests():
            self._add_to_inventory(digest, record)

    def _add_to_inventory(self, digest: str, record: ManifestRecord) -> None:
        for named in (digest, record.config):
            # A digest we cannot parse names nothing we could have cached: skip it.
            if named is not None:
                with contextlib.suppress(RegistryError):
                    self.store.add_inventory(parse_digest(named))

    def get_in_memory(self, key: str) -> Manifest | None:
        """A manifest held in memory: no I/O, no await."""
        held = self._held.get(key)
        if held is None:
            return None
        self.store.touch(held[1])
        return held[0]

    async def get(self, digest: Digest) -> Manifest | None:
        key = str(digest)
        held = self.get_in_memory(key)
        if held is not None:
            return held
        media_type = self._media_types.get(key)
        if media_type is None:
            record = await anyio.to_thread.run_sync(self.index.manifest, key)
            if record is None:
                return None
            media_type = record.media_type
            self._add_to_inventory(key, record)  # recorded by another process (`mirror import`) since start-up
        body = await self.store.read(digest)
        if body is None:
            return None
        manifest = Manifest(key, media_type, body)
        self._media_types[key] = media_type
        self._held[key] = (manifest, digest)
        return manifest

    def forget_in_memory(self, digest: str) -> None:
        """After `mirror rm` took the manifest out of the index: not answered from memory either."""
        self._held.pop(digest, None)
        self._media_types.pop(digest, None)

    async def put(self, digest: Digest, manifest: Manifest) -> None:
        if await self.store.stat(digest) is None:
            await self.store.put(digest, manifest.body)
        record = ManifestRecord.of(manifest.media_type, manifest.body)
        await anyio.to_thread.run_sync(self.index.set_manifest, manifest.digest, record)
        self._add_to_inventory(manifest.digest, record)
        self._media_types[manifest.digest] = manifest.media_type
        self._held[manifest.digest] = (manifest, digest)
