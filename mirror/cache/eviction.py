"""Eviction: the LRU index of committed blobs, the room they take, and what goes when room is made.

Two kinds of content are treated apart. The inventory (manifests and image configs: what
`mirror ls` shows, and small) is kept while layers can make room. The user's pins (`mirror
pin`, `[[pin]]`, `mirror import`; see `mirror.cache.pins`) are never evicted at all.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread

from mirror.cache.layout import CacheLayout
from mirror.registry.reference import Digest
from mirror.stats import Stats

log = logging.getLogger(__name__)


@dataclass
class Reservation:
    """Room `make_room` set aside for one blob being written; handed back once (`Eviction.release`)."""

    size: int


class Eviction:
    """What is committed, least recently used first, and the room it takes within max_size and on the disk."""

    def __init__(
        self,
        layout: CacheLayout,
        max_size: int | None = None,
        stats: Stats | None = None,
        inventory_max_age: float | None = None,
    ) -> None:
        self.layout = layout
        self.max_size = max_size
        self.stats = stats or Stats()
        # digest → (size, last use), least recently used first.
        self._lru: OrderedDict[Digest, tuple[int, float]] = OrderedDict()
        self._evicting: set[Digest] = set()
        # The inventory (manifests, image configs): kept when room is made, unless unused for inventory_max_age.
        self._inventory: set[Digest] = set()
        self.inventory_max_age = inventory_max_age
        self.total_bytes = 0
        self.reserved = 0
        # Room kept free on the cache's filesystem beyond a download's size.
        self.disk_margin = 64 * 1024 * 1024
        self.scanned = False  # the LRU index holds every file: until then, nothing is evicted
        self.pinned: frozenset[str] = frozenset()  # the user's pinned images' digests: never evicted
        self.on_removed: Callable[[list[Digest]], None] | None = None  # evicted or removed (a fleet forgets them)

    @property
    def count(self) -> int:
        return len(self._lru)

    def digests(self) -> list[str]:
        """Every indexed blob's digest (the fleet registers them)."""
        return [str(digest) for digest in self._lru]

    def index(self, found: list[tuple[float, Digest, int]]) -> None:
        """Take a directory scan's (mtime, digest, size), oldest first; blobs used since start-up keep their place."""
        used_since = self._lru
        self._lru = OrderedDict((digest, (size, mtime)) for mtime, digest, size in found if digest not in used_since)
        self._lru.update(used_since)
        self.total_bytes = sum(size for size, _ in self._lru.values())
        self.scanned = True

    def used(self, digest: Digest, size: int) -> None:
        """Mark a blob as just used; a file the index did not know (an import) joins it."""
        if digest in self._evicting:
            return
        if digest in self._lru:
            self._lru.move_to_end(digest)
        else:
            self.total_bytes += size
        self._lru[digest] = (size, time.time())

    def touch(self, digest: Digest) -> None:
        """Mark an indexed blob as used without touching the disk (a manifest served from memory)."""
        entry = self._lru.get(digest)
        if entry is not None:
            self.used(digest, entry[0])

    def forget(self, digest: Digest) -> None:
        entry = self._lru.pop(digest, None)
        if entry is not None:
            self.total_bytes -= entry[0]

    def used_since(self, digest: Digest, when: float) -> bool:
        entry = self._lru.get(digest)
        return entry is not None and entry[1] >= when

    def add_inventory(self, *digests: Digest) -> None:
        """Keep these when room is made: manifests and configs are what `mirror ls` shows, and small."""
        self._inventory.update(digests)

    def _inventory_in_use(self, digest: Digest, last_use: float, now: float) -> bool:
        """Whether a blob is inventory still in use: in the inventory, and used within inventory_max_age."""
        return digest in self._inventory and (
            self.inventory_max_age is None or last_use >= now - self.inventory_max_age
        )

    async def make_room(self, size: int | None) -> Reservation | None:
        """Reserve room for a blob about to be written, within max_size and on the disk.

        None when it cannot fit: larger than max_size, or the disk stays too full after
        evicting least recently used blobs. The caller then streams it without caching.
        """
        if size is not None and self.max_size is not None and size > self.max_size:
            return None
        reservation = Reservation(size or 0)
        self.reserved += reservation.size
        await self.evict_to_fit()
        need = reservation.size + self.disk_margin
        shortfall = need - await anyio.to_thread.run_sync(self.free_bytes)
        if shortfall > 0:
            await self.evict_bytes(shortfall)
            shortfall = need - await anyio.to_thread.run_sync(self.free_bytes)
        if shortfall > 0:
            self.release(reservation)
            self.stats.disk_full += 1
            log.warning("cache disk is full: %d more bytes needed; streaming without caching", shortfall)
            return None
        return reservation

    def free_bytes(self) -> int:
        stat = os.statvfs(self.layout.root)
        return stat.f_bavail * stat.f_frsize

    def release(self, reservation: Reservation) -> None:
        self.reserved -= reservation.size
        reservation.size = 0

    def committed(self, digest: Digest, size: int, reservation: Reservation | None) -> None:
        """A written blob joins the index as its reservation is handed back, in one step: counted
        twice in between, it made the next `make_room` evict it (the newest blob) to fit."""
        self.used(digest, size)
        if reservation is not None:
            self.release(reservation)

    def _least_recent(self, amount: int) -> list[Digest]:
        """Least recently used blobs totalling at least `amount` bytes, if there are that many.

        Layers go first. Only if they are not enough does the inventory go too, oldest first:
        max_size is a promise, and the inventory is a courtesy within it.
        """
        victims: list[Digest] = []
        now = time.time()
        for inventory in (False, True):
            for digest, (size, last_use) in self._lru.items():
                if amount <= 0:
                    return victims
                if str(digest) in self.pinned:
                    continue
                if self._inventory_in_use(digest, last_use, now) == inventory:
                    victims.append(digest)
                    amount -= size
        return victims

    async def evict_bytes(self, amount: int) -> None:
        """Remove least recently used blobs totalling at least `amount` bytes, if there are that many."""
        await self._evict(self._least_recent(amount))

    async def evict_to_fit(self) -> None:
        """Remove least recently used blobs until committed plus reserved bytes fit max_size."""
        if self.max_size is not None:
            await self._evict(self._least_recent(self.total_bytes + self.reserved - self.max_size))

    async def expire(self, max_age: float) -> None:
        """Remove blobs nobody has used for max_age seconds."""
        now = time.time()
        victims: list[Digest] = []
        for digest, (_, last_use) in self._lru.items():
            if last_use >= now - max_age:
                break
            if not self._inventory_in_use(digest, last_use, now) and str(digest) not in self.pinned:
                victims.append(digest)  # tag_max_age may be longer than max_age; pins are for good
        await self._evict(victims)

    async def _evict(self, victims: list[Digest]) -> None:
        victims = [digest for digest in victims if str(digest) not in self.pinned]
        if not victims:
            return
        if not self.scanned:
            log.debug("not evicting before the start-up scan has indexed every blob")
            return
        for digest in victims:
            self.stats.evictions += 1
            self.stats.evicted_bytes += self._lru[digest][0]
            self.forget(digest)
            self._inventory.discard(digest)
            self._evicting.add(digest)
        try:
            await anyio.to_thread.run_sync(_unlink_all, [self.layout.blob_path(d) for d in victims])
        finally:
            self._evicting.difference_update(victims)
        if self.on_removed is not None:
            self.on_removed(victims)
        log.debug("evicted %d blobs", len(victims))

    async def remove(self, digests: list[Digest]) -> None:
        """Remove these blobs on request (`mirror rm`), not to make room: not counted as evictions."""
        for digest in digests:
            self.forget(digest)
            self._inventory.discard(digest)
        await anyio.to_thread.run_sync(_unlink_all, [self.layout.blob_path(d) for d in digests])
        if self.on_removed is not None:
            self.on_removed(digests)


def _unlink_all(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
