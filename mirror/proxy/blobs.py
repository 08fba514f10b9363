"""Blobs through the mirror: the cached file, the download fetching it (new or joined), or a
pass-through when the cache has no room; policy and links checked before any of them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Protocol

from mirror.cache.blobs import BlobStore
from mirror.link import Link
from mirror.proxy.ahead import FetchAhead
from mirror.proxy.answers import CacheStatus, count_blob
from mirror.proxy.bodies import BlobBody, CachedBody, DownloadBody, PassThroughBody
from mirror.proxy.links import LinkGuard
from mirror.registry.errors import Denied, NoRoom
from mirror.registry.reference import Digest, parse_digest
from mirror.stats import Stats
from mirror.transfer.downloads import BlobStream
from mirror.transfer.inflight import InflightDownloads
from mirror.transfer.passthrough import PassThrough
from mirror.upstream import Upstream

if TYPE_CHECKING:
    from mirror.proxy.signed import SignatureGate  # built only with a signature policy

log = logging.getLogger(__name__)


class BlobSource(Protocol):
    """Where a missing blob comes from: the upstream registry; in a fleet, other replicas first.

    Its link caps the connections and bandwidth its downloads use. Only the upstream object itself
    fetches under the client's repository (which checks it there); any other source, a replica or
    a wrapper, is taken as not, and the blob's link is checked first: the safe side.
    """

    link: Link

    def open_blob(
        self, repository: str, digest: Digest, start: int = 0, end: int | None = None
    ) -> AbstractAsyncContextManager[BlobStream]: ...


# Each upstream's blob source, chosen by the composition root.
SourceFor = Callable[[Upstream], BlobSource]


class BlobProxy:
    def __init__(
        self,
        *,
        store: BlobStore,
        inflight: InflightDownloads,
        guard: LinkGuard,
        source_for: SourceFor,
        stats: Stats,
        ahead: FetchAhead,
    ) -> None:
        self.store = store
        self.inflight = inflight
        self.guard = guard
        self.source_for = source_for
        self.stats = stats
        self.gate: SignatureGate | None = None  # set by the proxy when a signature policy is on
        self.ahead = ahead
        self._ahead_tasks: set[asyncio.Task[None]] = set()

    async def blob(
        self, upstream: Upstream, repository: str, digest: Digest, *, background: bool = False, attachment: bool = False
    ) -> BlobBody:
        """The cached file, or the download (new or joined) that is fetching it, or a pass-through.

        A `background` request (a prefetch) starts a download that yields to clients' downloads.
        An `attachment` (a signature's own blob, read by the signature policy) asks no verdict.
        A client's request for a layer of an image just served starts the image's other blobs.
        """
        claimed = [] if background or attachment else self.ahead.claim(upstream.name, repository, str(digest))
        try:
            return await self._blob(upstream, repository, digest, background=background, attachment=attachment)
        finally:
            if claimed:  # after this request's own download, so that it goes first
                self._fetch_ahead(upstream, repository, claimed)

    async def _blob(
        self, upstream: Upstream, repository: str, digest: Digest, *, background: bool, attachment: bool
    ) -> BlobBody:
        source = self.source_for(upstream)
        await self._check(upstream, source, repository, digest)
        if not attachment:
            self._check_signed(upstream, repository, digest)
        found = await self.inflight.find(digest)
        if isinstance(found, tuple):
            count_blob(self.stats, CacheStatus.HIT)
            return CachedBody(*found, self.stats)

        def open_source(start: int, end: int | None) -> AbstractAsyncContextManager[BlobStream]:
            return source.open_blob(repository, digest, start, end)

        if found is not None:
            download = found
            if not background:
                download.client_joined()
            status = CacheStatus.COALESCED
        else:
            # No pause since find() looked: no second download can slip in between.
            download = self.inflight.start(digest, open_source, source.link, background=background)
            status = CacheStatus.MISS
        count_blob(self.stats, status)
        try:
            # Shielded: one client leaving must not cancel the download the others share.
            await asyncio.shield(download.ready)
        except NoRoom:
            self.stats.uncached_downloads += 1
            passthrough = PassThrough(digest, open_source, source.link, self.stats)
            await passthrough.open()
            return PassThroughBody(passthrough)
        return DownloadBody(download, status, self.stats)

    def _fetch_ahead(self, upstream: Upstream, repository: str, digests: list[str]) -> None:
        """Start the rest of an image's blobs, each checked as a client's request would be, and let
        each run to the cache whether or not a client comes for it."""

        async def one(text: str) -> None:
            try:
                digest = parse_digest(text)
                if self.store.size_now(digest) is not None:
                    return
                body = await self._blob(upstream, repository, digest, background=False, attachment=False)
                if await body.settle():
                    self.stats.blobs_fetched_ahead += 1
            except Exception as exc:  # its client's own request says what went wrong
                log.info("fetch ahead of %s in %s/%s stopped: %s", text, upstream.name, repository, exc)

        for digest in digests:
            task = asyncio.create_task(one(digest))
            self._ahead_tasks.add(task)
            task.add_done_callback(self._ahead_tasks.discard)

    async def size(self, upstream: Upstream, repository: str, digest: Digest) -> int | None:
        """The size of a blob for HEAD, without downloading it."""
        await self._check(upstream, self.source_for(upstream), repository, digest)
        self._check_signed(upstream, repository, digest)
        stat = await self.store.stat(digest)
        if stat is not None:
            count_blob(self.stats, CacheStatus.HIT)
            return stat.st_size
        download = self.inflight.get(digest)
        if download is not None and download.size is not None:
            return download.size
        return await upstream.head_blob(repository, digest)

    async def local(self, digest: Digest) -> BlobBody | None:
        """For another replica: the blob if held, or the download fetching it joined; never a new download."""
        found = await self.inflight.find(digest)
        if found is None:
            return None
        if isinstance(found, tuple):
            return CachedBody(*found, self.stats)
        download = found
        try:
            await asyncio.shield(download.ready)
        except NoRoom:
            return None
        return DownloadBody(download, CacheStatus.COALESCED, self.stats, shared_only=True)

    def _check_signed(self, upstream: Upstream, repository: str, digest: Digest) -> None:
        """With a signature policy: a blob only as part of a manifest the policy accepted there."""
        if self.gate is not None and not self.gate.blob_allowed(upstream, repository, digest):
            raise Denied(
                "the signature policy has accepted no manifest here that names this blob: "
                "pull the image by tag or digest",
                detail={"name": f"{upstream.name}/{repository}", "digest": str(digest)},
            )

    async def _check(self, upstream: Upstream, source: BlobSource, repository: str, digest: Digest) -> None:
        """A blocked digest is refused; a held or downloading blob is served under `repository`
        only if it belongs there. One neither held nor downloading is fetched under that
        repository, which checks it; unless its source is not the upstream (another replica's
        copy skips the upstream: checked here)."""
        upstream.policy.check_digest(str(digest))
        if not self.guard.enforce:
            return
        local = self.store.size_now(digest) is not None or self.inflight.get(digest) is not None
        if local or source is not upstream:
            await self.guard.check(upstream, repository, digest, manifest=False)
