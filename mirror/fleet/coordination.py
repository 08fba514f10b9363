"""The proxy's coordination seam, answered by the fleet through Redis: one replica revalidates a
tag, one fetches a manifest by digest, and the others wait for what it shares."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from mirror.cache.metadata import Manifest, manifest_digest
from mirror.fleet import keys
from mirror.fleet.coordinator import Fleet

T = TypeVar("T")

# How long a replica waits for the answer another replica of the fleet is fetching.
FLEET_WAIT = 5.0
# How often it looks for it meanwhile.
POLL = 0.05


class FleetCoordination:
    """A `mirror.proxy.coordination.Coordination` for a replica of a fleet."""

    def __init__(self, fleet: Fleet, wait: float = FLEET_WAIT) -> None:
        self.fleet = fleet
        self.wait = wait

    async def claim_tag_refresh(self, upstream: str, repository: str, tag: str, seconds: float) -> bool:
        """One replica per tag per tag_ttl asks the upstream, fleet-wide (all of them while Redis fails)."""
        return await self.fleet.claim(keys.tag_refresh(upstream, repository, tag), seconds)

    async def claim_manifest_fetch(self, digest: str) -> bool:
        """One replica at a time fetches a manifest by digest, fleet-wide; the claim lasts the fleet's wait."""
        return await self.fleet.claim(keys.manifest_fetch(digest), self.wait)

    async def share_manifest(self, manifest: Manifest) -> None:
        try:
            text = manifest.body.decode()
        except UnicodeDecodeError:
            return  # manifests are JSON; a replica without it asks the upstream by digest
        value = json.dumps({"media_type": manifest.media_type, "body": text})
        await self.fleet.set_once(keys.shared_manifest(manifest.digest), value, keys.SHARED_MANIFEST_DAYS)

    async def shared_manifest(self, digest: str) -> Manifest | None:
        """Redis's copy, checked: a value that does not hash to its digest is not a manifest of it."""
        text = await self.fleet.get(keys.shared_manifest(digest))
        try:
            data = json.loads(text) if text else None
            if not isinstance(data, dict):
                return None
            media_type, body = str(data["media_type"]), str(data["body"]).encode()
        except (ValueError, KeyError):
            return None
        return Manifest(digest, media_type, body) if manifest_digest(body) == digest else None

    async def wait_for(self, look: Callable[[], Awaitable[T | None]]) -> T | None:
        """Looked for every POLL seconds, for up to the fleet's wait."""
        deadline = time.monotonic() + self.wait
        while time.monotonic() < deadline:
            await asyncio.sleep(POLL)
            if (found := await look()) is not None:
                return found
        return None
