"""The one seam between the pull-through logic and other replicas of a fleet.

The proxy asks it who fetches what: a tag's revalidation, a manifest by digest. A replica on
its own (`Alone`) answers at once: it always fetches, and nobody shares with it. A fleet
(`mirror.fleet.coordination`) answers through Redis, and owns how it waits for another
replica's answer, so that polling can become pub/sub without touching the proxy.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from mirror.cache.metadata import Manifest

T = TypeVar("T")


class Coordination(Protocol):
    """Who fetches what among the replicas, and what one replica shares with the others."""

    async def claim_tag_refresh(self, upstream: str, repository: str, tag: str, seconds: float) -> bool:
        """Whether this replica asks the upstream for the tag now (else another one does)."""
        ...

    async def claim_manifest_fetch(self, digest: str) -> bool:
        """Whether this replica fetches the manifest by digest now (else another one does)."""
        ...

    async def share_manifest(self, manifest: Manifest) -> None:
        """A verified manifest, for the replicas that learn its tag from the fleet and do not hold it."""
        ...

    async def shared_manifest(self, digest: str) -> Manifest | None:
        """A manifest another replica shared, only if it matches its digest."""
        ...

    async def wait_for(self, look: Callable[[], Awaitable[T | None]]) -> T | None:
        """What another replica is fetching: `look` until it finds it, or the fleet's wait is over."""
        ...


class Alone:
    """A replica on its own: it fetches whatever it lacks (its downloads are single-flight already)."""

    async def claim_tag_refresh(self, upstream: str, repository: str, tag: str, seconds: float) -> bool:
        return True

    async def claim_manifest_fetch(self, digest: str) -> bool:
        return True

    async def share_manifest(self, manifest: Manifest) -> None:
        """Nobody to share with."""

    async def shared_manifest(self, digest: str) -> Manifest | None:
        return None

    async def wait_for(self, look: Callable[[], Awaitable[T | None]]) -> T | None:
        return await look()  # nobody else is fetching: what is there now is all there will be
