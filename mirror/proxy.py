"""The pull-through logic: local first, else the upstream, for manifests, blobs and tags."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from cachetools import TTLCache

from mirror.bodies import BlobBody, CachedBody, DownloadBody, PassThroughBody
from mirror.cache.blobs import BlobStore
from mirror.cache.kept import KeptLists
from mirror.cache.layout import TagEntry
from mirror.cache.links import BlobLinks
from mirror.cache.metadata import Manifest, ManifestCache, manifest_digest, same_answer
from mirror.cache.tags import TagStore
from mirror.link import Link
from mirror.lists import ListAnswers
from mirror.registry.errors import (
    FALLBACK_ERRORS,
    DigestInvalid,
    ManifestUnknown,
    NoRoom,
    RegistryError,
)
from mirror.registry.mediatypes import ACCEPT_ALL, accept_key, accepted_types, admits
from mirror.registry.reference import Digest, parse_digest
from mirror.stats import Stats
from mirror.transfer.downloads import BlobStream
from mirror.transfer.flights import SingleFlight
from mirror.transfer.inflight import InflightDownloads
from mirror.transfer.passthrough import PassThrough
from mirror.upstream import Upstream

log = logging.getLogger(__name__)

# How long a replica waits for the answer another replica of the fleet is fetching.
FLEET_WAIT = 5.0

# Tags remembered as missing (each for negative_ttl), at most.
MISSING_KEPT = 10_000

# The upstream's answers for a tag it deleted: with keep_deleted_tags, the cached one is served.
_DELETED_CODES = frozenset({"MANIFEST_UNKNOWN", "NAME_UNKNOWN"})


@dataclass(frozen=True)
class ManifestAnswer:
    manifest: Manifest
    cache_status: str  # HIT, MISS, REVALIDATED or STALE
    age: float | None = None  # a STALE answer: seconds since the upstream last confirmed it
    upstream_headers: tuple[tuple[str, str], ...] = ()  # the upstream's quota headers, passed on


class BlobSource(Protocol):
    """Where a missing blob comes from: today the upstream registry; in a fleet, also another replica.

    Its link caps the connections and bandwidth its downloads use.
    """

    link: Link

    def open_blob(
        self, repository: str, digest: Digest, start: int = 0, end: int | None = None
    ) -> AbstractAsyncContextManager[BlobStream]: ...


class Proxy(ListAnswers):
    def __init__(
        self,
        store: BlobStore,
        manifests: ManifestCache,
        tags: TagStore,
        inflight: InflightDownloads,
        stats: Stats,
        tag_ttl: float,
        kept_lists: KeptLists,
        negative_ttl: float = 0.0,
        links: BlobLinks | None = None,
        enforce_links: bool = False,
    ) -> None:
        self.store = store
        self.manifests = manifests
        self.tag_store = tags
        self.kept_lists = kept_lists
        self.links = links
        # Serve a cached digest under a repository only once linked to it (private content is held).
        self.enforce_links = enforce_links and links is not None
        self.peers_may_serve = False  # in a fleet: missing blobs may come from other replicas
        self.inflight = inflight
        self.stats = stats
        self.tag_ttl = tag_ttl
        self._manifest_fetches: SingleFlight[tuple[str, str, str, str], ManifestAnswer] = SingleFlight()
        self._list_fetches: SingleFlight[str, tuple[Any, ...]] = SingleFlight()
        # Tags the upstream said it does not have (404), by upstream, repository, tag and Accept
        # class: cosign probes `sha256-<hex>.sig` and friends for every image, and is told no.
        self._missing: TTLCache[tuple[str, str, str, str], RegistryError] | None = (
            TTLCache(MISSING_KEPT, negative_ttl) if negative_ttl > 0 else None
        )

    # Manifests

    def fresh_manifest(
        self, upstream: Upstream, repository: str, reference: str | Digest, accepted: frozenset[str]
    ) -> Manifest | None:
        """The answer when it is fresh and held in memory: no I/O and no await, so the app can
        answer the commonest request (a warm tag) without its framework."""
        if isinstance(reference, Digest):
            if str(reference) in upstream.policy.blocked:
                return None
            if self.enforce_links and not self._linked_in_memory(upstream, repository, str(reference)):
                return None
            cached = self.manifests.get_in_memory(str(reference))
            return cached if cached is not None and admits(accepted, cached.media_type) else None
        entries = self.tag_store.tag_entries_in_memory(upstream.name, repository, reference)
        entry = _answer_for(entries, accepted) if entries else None
        if entry is None or time.time() - entry.fetched_at >= self.tag_ttl or entry.digest in upstream.policy.blocked:
            return None
        return self.manifests.get_in_memory(entry.digest)

    async def manifest(
        self, upstream: Upstream, repository: str, reference: str | Digest, accept: list[str]
    ) -> ManifestAnswer:
        """The manifest for a tag or digest; a blocked digest is refused however it was reached."""
        answer = await self._manifest(upstream, repository, reference, accept)
        manifest = answer.manifest
        upstream.policy.check_digest(manifest.digest)
        if self.links is not None:
            await self.links.link_manifest(upstream.name, repository, manifest.digest, manifest.body)
        return answer

    async def _manifest(
        self, upstream: Upstream, repository: str, reference: str | Digest, accept: list[str]
    ) -> ManifestAnswer:
        accepted = accepted_types(accept)
        fresh = self.fresh_manifest(upstream, repository, reference, accepted)
        if fresh is not None:
            self.stats.manifest_hits += 1
            return ManifestAnswer(fresh, "HIT")
        # Not in memory: one flight per question looks on disk, then asks the upstream. Looking
        # inside the flight also catches an answer that a flight which just ended stored.
        key = (upstream.name, repository, str(reference), accept_key(accepted))
        if isinstance(reference, Digest):
            digest = reference
            upstream.policy.check_digest(str(digest))  # before any upstream request
            return await self._manifest_fetches.run(
                key, lambda: self._fetch_by_digest(upstream, repository, digest, accept)
            )
        tag = reference
        missing = self._missing.get(key) if self._missing is not None else None
        if missing is not None:
            self.stats.negative_hits += 1
            raise RegistryError(missing.message, code=missing.code, status=missing.status, detail=missing.detail)
        return await self._manifest_fetches.run(
            key, lambda: self._resolve_tag_or_remember(upstream, repository, tag, accept, key)
        )

    async def _resolve_tag_or_remember(
        self, upstream: Upstream, repository: str, tag: str, accept: list[str], key: tuple[str, str, str, str]
    ) -> ManifestAnswer:
        try:
            return await self._resolve_tag(upstream, repository, tag, accept)
        except RegistryError as exc:
            # Only a definite "no": never 401 (credentials), 429 (quota) or 5xx (the upstream's trouble).
            if exc.status == 404 and self._missing is not None:
                self._missing[key] = exc
            raise

    async def _fetch_by_digest(
        self, upstream: Upstream, repository: str, digest: Digest, accept: list[str]
    ) -> ManifestAnswer:
        stored = held = await self.manifests.get(digest)
        if held is None:
            stored = await self._from_fleet(str(digest))
        if stored is not None:  # held or shared; but does it belong here?
            await self._check_link(upstream, repository, digest, manifest=True, accept=accept)
            if held is None:
                await self.manifests.put(digest, stored)  # a shared one is kept once it may be served here
        if stored is not None and admits(accepted_types(accept), stored.media_type):
            self.stats.manifest_hits += 1
            return ManifestAnswer(stored, "HIT")
        try:
            fetched = await upstream.get_manifest(repository, str(digest), accept)
        except FALLBACK_ERRORS:
            if stored is None:
                raise
            log.warning("upstream %s failed; serving cached manifest %s", upstream.name, digest)
            self.stats.manifest_stale += 1
            return ManifestAnswer(stored, "STALE")
        self.stats.manifest_misses += 1
        if manifest_digest(fetched.body) != str(digest):
            self.stats.digest_mismatches += 1
            raise DigestInvalid("upstream manifest does not match the requested digest", detail={"digest": str(digest)})
        manifest = Manifest(str(digest), fetched.media_type, fetched.body)
        await self.manifests.put(digest, manifest)
        await self.tag_store.share_manifest(manifest.digest, manifest.media_type, manifest.body)
        return ManifestAnswer(manifest, "MISS")

    async def _resolve_tag(self, upstream: Upstream, repository: str, tag: str, accept: list[str]) -> ManifestAnswer:
        accepted = accepted_types(accept)
        key = accept_key(accepted)
        entries = await self.tag_store.tag_entries(upstream.name, repository, tag, reload=True)
        entry = _answer_for(entries, accepted)
        if entry is not None and time.time() - entry.fetched_at < self.tag_ttl:
            cached = await self._held_or_shared(entry.digest)
            if cached is not None:
                self.stats.manifest_hits += 1
                return ManifestAnswer(cached, "HIT")
        if not await self.tag_store.claim_refresh(upstream.name, repository, tag, self.tag_ttl):
            # Another replica of the fleet asks the upstream for this tag: wait for its answer.
            shared = await self._answer_from_fleet(upstream, repository, tag, accepted, entry)
            if shared is not None:
                return shared
        try:
            if entry is not None:
                head = await upstream.head_manifest(repository, tag, accept)
                if head.digest == entry.digest:
                    cached = await self.manifests.get(parse_digest(entry.digest))
                    if cached is not None and head.stale is not None:
                        # A mirror upstream could not revalidate it either: stale here too, not fresh again.
                        self.stats.manifest_stale += 1
                        return ManifestAnswer(cached, "STALE", head.stale.age, head.quota)
                    if cached is not None:
                        await self._remember_tag(upstream, repository, tag, key, cached)
                        self.stats.manifest_hits += 1
                        return ManifestAnswer(cached, "REVALIDATED", upstream_headers=head.quota)
            fetched = await upstream.get_manifest(repository, tag, accept)
        except (*FALLBACK_ERRORS, ManifestUnknown) as exc:
            deleted = isinstance(exc, ManifestUnknown) and exc.code in _DELETED_CODES
            if isinstance(exc, ManifestUnknown) and not (deleted and upstream.policy.keep_deleted_tags):
                raise
            stale = await self._stale_tag(entries, entry, accepted)
            if stale is None:
                raise
            if deleted:
                log.warning("upstream %s no longer has %s:%s; keeping the cached one", upstream.name, repository, tag)
            else:
                log.warning(
                    "upstream %s failed (%s); serving cached %s:%s", upstream.name, exc.message, repository, tag
                )
            self.stats.manifest_stale += 1
            manifest, fetched_at = stale
            return ManifestAnswer(manifest, "STALE", max(0.0, time.time() - fetched_at))
        self.stats.manifest_misses += 1
        digest = manifest_digest(fetched.body)
        if fetched.digest is not None and fetched.digest != digest:
            self.stats.digest_mismatches += 1
            raise DigestInvalid(
                "upstream manifest does not match its Docker-Content-Digest", detail={"digest": fetched.digest}
            )
        manifest = Manifest(digest, fetched.media_type, fetched.body)
        await self.manifests.put(parse_digest(digest), manifest)
        if fetched.stale is not None:
            # Served stale by a mirror upstream: kept, but already expired, so the next request asks again.
            age = max(fetched.stale.age, self.tag_ttl)
            await self._remember_tag(upstream, repository, tag, key, manifest, time.time() - age)
            return ManifestAnswer(manifest, "STALE", fetched.stale.age, fetched.quota)
        await self._remember_tag(upstream, repository, tag, key, manifest)
        return ManifestAnswer(manifest, "MISS", upstream_headers=fetched.quota)

    async def _answer_from_fleet(
        self, upstream: Upstream, repository: str, tag: str, accepted: frozenset[str], old: TagEntry | None
    ) -> ManifestAnswer | None:
        """The answer another replica fetched (polled for FLEET_WAIT); the old one, STALE, when it
        gives none in time; None when there is nothing to serve (then this replica asks itself)."""

        async def newer() -> Manifest | None:
            entries = await self.tag_store.tag_entries(upstream.name, repository, tag, reload=True)
            entry = _answer_for(entries, accepted)
            if entry is not None and (old is None or entry.fetched_at > old.fetched_at):
                return await self._held_or_shared(entry.digest)
            return None

        if (cached := await _wait_for_fleet(newer)) is not None:
            self.stats.manifest_hits += 1
            return ManifestAnswer(cached, "HIT")
        if old is not None and (cached := await self.manifests.get(parse_digest(old.digest))) is not None:
            self.stats.manifest_stale += 1
            return ManifestAnswer(cached, "STALE", max(0.0, time.time() - old.fetched_at))
        return None

    async def _held_or_shared(self, digest: str) -> Manifest | None:
        """A manifest from this cache, else as another replica of the fleet shared it (checked, then kept)."""
        held = await self.manifests.get(parse_digest(digest))
        if held is not None:
            return held
        shared = await self._shared(digest)
        if shared is not None:
            await self.manifests.put(parse_digest(digest), shared)
        return shared

    async def _shared(self, digest: str) -> Manifest | None:
        """A manifest as another replica of the fleet shared it, if it matches its digest."""
        shared = await self.tag_store.shared_manifest(digest)
        if shared is None or manifest_digest(shared[1]) != digest:
            return None
        return Manifest(digest, shared[0], shared[1])

    async def _from_fleet(self, digest: str) -> Manifest | None:
        """A manifest by digest that another replica shared, or is fetching now (waited for, up to
        FLEET_WAIT); None when this replica is to fetch it (alone, it always is)."""
        shared = await self._shared(digest)
        if shared is not None or await self.tag_store.claim_fetch(digest, FLEET_WAIT):
            return shared
        return await _wait_for_fleet(lambda: self._shared(digest))

    async def _remember_tag(
        self,
        upstream: Upstream,
        repository: str,
        tag: str,
        key: str,
        manifest: Manifest,
        fetched_at: float | None = None,
    ) -> None:
        entry = TagEntry(manifest.digest, manifest.media_type, time.time() if fetched_at is None else fetched_at)
        await self.tag_store.share_manifest(manifest.digest, manifest.media_type, manifest.body)
        await self.tag_store.set_tag(upstream.name, repository, tag, key, entry)

    async def _stale_tag(
        self, entries: dict[str, TagEntry], entry: TagEntry | None, accepted: frozenset[str]
    ) -> tuple[Manifest, float] | None:
        """The newest cached answer for this tag that the client can read, and when it was fetched."""
        candidates = [entry] if entry is not None else []
        candidates += sorted(entries.values(), key=lambda e: e.fetched_at, reverse=True)
        for candidate in candidates:
            if admits(accepted, candidate.media_type):
                cached = await self.manifests.get(parse_digest(candidate.digest))
                if cached is not None:
                    return cached, candidate.fetched_at
        return None

    # Blobs

    async def blob(self, source: BlobSource, repository: str, digest: Digest, *, background: bool = False) -> BlobBody:
        """The cached file, or the download (new or joined) that is fetching it, or a pass-through.

        A `background` request (a prefetch) starts a download that yields to clients' downloads.
        """

        def open_source(start: int, end: int | None) -> AbstractAsyncContextManager[BlobStream]:
            return source.open_blob(repository, digest, start, end)

        found = await self.inflight.find(digest)
        if isinstance(found, tuple):
            self.stats.blob_hits += 1
            return CachedBody(*found, self.stats)
        if found is not None:
            download = found
            if not background:
                download.client_joined()
            self.stats.coalesced += 1
            status = "COALESCED"
        else:
            # No pause since find() looked: no second download can slip in between.
            self.stats.blob_misses += 1
            download = self.inflight.start(digest, open_source, source.link, background=background)
            status = "MISS"
        try:
            # Shielded: one client leaving must not cancel the download the others share.
            await asyncio.shield(download.ready)
        except NoRoom:
            self.stats.uncached_downloads += 1
            passthrough = PassThrough(digest, open_source, source.link, self.stats)
            await passthrough.open()
            return PassThroughBody(passthrough)
        return DownloadBody(download, status, self.stats)

    def _linked_in_memory(self, upstream: Upstream, repository: str, digest: str) -> bool:
        return self.links is not None and self.links.linked_in_memory(upstream.name, repository, digest)

    async def _check_link(
        self, upstream: Upstream, repository: str, digest: Digest, *, manifest: bool, accept: list[str] | None = None
    ) -> None:
        """A held digest may be served under `repository` if linked to it, or if the upstream says,
        under that repository and with its credential, that it has it there (then it is linked).
        Otherwise the upstream's answer (404, 401, 503) is raised."""
        if not self.enforce_links or self.links is None:
            return
        if await self.links.linked(upstream.name, repository, str(digest)):
            return
        if manifest:
            await upstream.head_manifest(repository, str(digest), accept or [ACCEPT_ALL])
        else:
            await upstream.head_blob(repository, digest)
        await self.links.link(upstream.name, repository, {str(digest)})

    async def check_blob_link(self, upstream: Upstream, repository: str, digest: Digest) -> None:
        """Before a held or downloading blob is served under `repository`: it must belong there.

        A blob neither held nor downloading is fetched under that repository, which checks it;
        unless other replicas may give it (a fleet): their copies were not fetched under it."""
        if not self.enforce_links:
            return
        local = self.store.size_now(digest) is not None or self.inflight.get(digest) is not None
        if local or self.peers_may_serve:  # another replica's copy skips the upstream: check it here
            await self._check_link(upstream, repository, digest, manifest=False)

    async def local_blob(self, digest: Digest) -> BlobBody | None:
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
        return DownloadBody(download, "COALESCED", self.stats, shared_only=True)

    async def blob_size(self, upstream: Upstream, repository: str, digest: Digest) -> int | None:
        """The size of a blob for HEAD, without downloading it."""
        stat = await self.store.stat(digest)
        if stat is not None:
            self.stats.blob_hits += 1
            return stat.st_size
        download = self.inflight.get(digest)
        if download is not None and download.size is not None:
            return download.size
        return await upstream.head_blob(repository, digest)


async def _wait_for_fleet(look: Callable[[], Awaitable[Manifest | None]]) -> Manifest | None:
    """What another replica is fetching: looked for every 50 ms, for up to FLEET_WAIT."""
    deadline = time.monotonic() + FLEET_WAIT
    while time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        if (found := await look()) is not None:
            return found
    return None


def _answer_for(entries: dict[str, TagEntry], accepted: frozenset[str]) -> TagEntry | None:
    """The newest cached answer for this tag that the upstream would also give this client."""
    exact = entries.get(accept_key(accepted))
    if exact is not None:
        return exact
    shared = [e for key, e in entries.items() if same_answer(key, e.media_type, accepted)]
    return max(shared, key=lambda e: e.fetched_at, default=None)
