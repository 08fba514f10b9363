"""Where a missing blob comes from in a fleet: a replica that holds it, else the replica that is
downloading it, else the upstream, under a lease that makes this replica the one downloading it.

Whatever the source, the bytes go through this replica's own single-flight download and
digest check, and land in its own cache.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager

import httpx

from mirror.fleet.coordinator import Fleet
from mirror.fleet.signing import AUTH_HEADER, PEER_PATH, sign
from mirror.registry.errors import RegistryError, UpstreamFailed
from mirror.registry.reference import Digest
from mirror.stats import UpstreamStats
from mirror.upstream import Upstream
from mirror.upstream.body import UpstreamBody

log = logging.getLogger(__name__)


class FleetSource:
    """A BlobSource for one upstream, in a fleet."""

    def __init__(self, upstream: Upstream, fleet: Fleet, client: httpx.AsyncClient, counters: UpstreamStats) -> None:
        self.upstream = upstream
        self.fleet = fleet
        self.link = upstream.link
        self._client = client  # to the other replicas
        self._counters = counters  # bytes from the other replicas

    def open_blob(
        self, repository: str, digest: Digest, start: int = 0, end: int | None = None
    ) -> AbstractAsyncContextManager[UpstreamBody]:
        return self._open(repository, digest, start, end)

    @asynccontextmanager
    async def _open(self, repository: str, digest: Digest, start: int, end: int | None) -> AsyncIterator[UpstreamBody]:
        peers = await self.fleet.holders(str(digest))
        owner = None
        if not peers:
            # Nobody holds it: the replica with the lease downloads it, the others stream from it.
            # (A range of our own download finds the lease ours: None.)
            owner, peers = await self._lease_or_holders(digest)
        async with AsyncExitStack() as stack:
            body = await self._first_that_answers(stack, peers, digest, start)
            if body is None and owner is not None:
                # The replica downloading it failed us (killed?): one replica takes its lease over,
                # the others stream from that one, so the upstream is asked once more, not once each.
                owner, peers = await self._lease_or_holders(digest, failed=owner)
                body = await self._first_that_answers(stack, peers, digest, start)
            if body is None:
                body = await stack.enter_async_context(self.upstream.open_blob(repository, digest, start, end))
            yield body

    async def _lease_or_holders(self, digest: Digest, failed: str | None = None) -> tuple[str | None, list[str]]:
        """Whom to ask for a blob: (the replica downloading it, [that one]); or, when the lease is
        ours, (None, the holders), as the one that had it may have finished between our questions
        (then the lease goes back); (None, []) when it is ours to download, under our lease."""
        owner = await self.fleet.lease(str(digest), failed=failed)
        if owner is not None:
            return owner, [owner]
        peers = await self.fleet.holders(str(digest))
        if peers:
            await self.fleet.release(str(digest))
        return None, peers

    async def _first_that_answers(
        self, stack: AsyncExitStack, peers: list[str], digest: Digest, start: int
    ) -> UpstreamBody | None:
        for peer in peers:
            try:
                return await stack.enter_async_context(self._from_peer(peer, digest, start))
            except (httpx.HTTPError, RegistryError) as exc:
                log.info("fleet: %s could not give %s (%s); trying the next source", peer, digest, exc)
        return None

    @asynccontextmanager
    async def _from_peer(self, peer: str, digest: Digest, start: int) -> AsyncIterator[UpstreamBody]:
        """The blob from another replica: the whole of it from `start` (its ranges are not cut to
        match ours: one stream, as from a mirror)."""
        path = f"{PEER_PATH}{digest}"
        headers = {AUTH_HEADER: sign(self.fleet.secret, "GET", peer, path)}
        if start > 0:
            headers["Range"] = f"bytes={start}-"
        request = self._client.build_request("GET", f"{peer}{path}", headers=headers)
        response = await self._client.send(request, stream=True)
        try:
            if response.status_code not in (200, 206):
                raise UpstreamFailed(f"replica {peer} answered {response.status_code}")
            yield UpstreamBody(
                response,
                start,
                upstream=f"replica {peer}",
                counters=self._counters,
                failure=lambda exc: UpstreamFailed(f"replica {peer} broke off: {type(exc).__name__}"),
            )
        finally:
            await response.aclose()
