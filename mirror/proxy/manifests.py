"""Manifests through the mirror: from memory, the cache, another replica, or the upstream.

By digest, a manifest is immutable: cached until evicted, never revalidated. By tag, the
answer is fresh for tag_ttl, then revalidated (`mirror.proxy.tags`).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from mirror.cache.journal import TagJournal
from mirror.cache.metadata import Manifest, ManifestCache, manifest_digest
from mirror.cache.tags import TagStore
from mirror.proxy.answers import CacheStatus, Freshness, ManifestAnswer, answered, count_manifest
from mirror.proxy.coordination import Coordination
from mirror.proxy.links import LinkGuard
from mirror.proxy.tags import MissingTags, TagResolver, answer_for

if TYPE_CHECKING:
    from mirror.proxy.signed import SignatureGate  # built only with a signature policy
from mirror.registry.errors import FALLBACK_ERRORS, DigestInvalid
from mirror.registry.mediatypes import accept_key, accepted_types, admits
from mirror.registry.reference import Digest
from mirror.stats import Stats
from mirror.transfer.flights import SingleFlight
from mirror.upstream import Upstream

log = logging.getLogger(__name__)


class ManifestProxy:
    def __init__(
        self,
        *,
        manifests: ManifestCache,
        tags: TagStore,
        journal: TagJournal,
        coordination: Coordination,
        guard: LinkGuard,
        freshness: Freshness,
        stats: Stats,
        negative_ttl: float,
    ) -> None:
        self.manifests = manifests
        self.tags = tags
        self.coordination = coordination
        self.guard = guard
        self.freshness = freshness
        self.stats = stats
        self.gate: SignatureGate | None = None  # set by the proxy when a signature policy is on
        self._fetches: SingleFlight[tuple[str, str, str, str], ManifestAnswer] = SingleFlight()
        self._missing = MissingTags(negative_ttl, stats)
        self._resolver = TagResolver(
            manifests=manifests,
            tags=tags,
            journal=journal,
            coordination=coordination,
            freshness=freshness,
            stats=stats,
        )

    def fresh(
        self, upstream: Upstream, repository: str, reference: str | Digest, accepted: frozenset[str]
    ) -> Manifest | None:
        """The answer when it is fresh and held in memory: no I/O and no await, so the app can
        answer the commonest request (a warm tag) without its framework."""
        if isinstance(reference, Digest):
            if str(reference) in upstream.policy.blocked:
                return None
            if not self.guard.allows_in_memory(upstream, repository, str(reference)):
                return None
            if self.gate is not None and not self.gate.allows_in_memory(
                upstream, repository, reference, str(reference)
            ):
                return None
            cached = self.manifests.get_in_memory(str(reference))
            return cached if cached is not None and admits(accepted, cached.media_type) else None
        entries = self.tags.tag_entries_in_memory(upstream.name, repository, reference)
        entry = answer_for(entries, accepted) if entries else None
        if entry is None or not self.freshness.fresh(entry.fetched_at, time.time()):
            return None
        if entry.digest in upstream.policy.blocked:
            return None
        if self.gate is not None and not self.gate.allows_in_memory(upstream, repository, reference, entry.digest):
            return None
        return self.manifests.get_in_memory(entry.digest)

    async def manifest(
        self, upstream: Upstream, repository: str, reference: str | Digest, accept: list[str]
    ) -> ManifestAnswer:
        """The manifest for a tag or digest; a blocked digest, or one the signature policy does not
        accept, is refused however it was reached."""
        answer = await self.attachment(upstream, repository, reference, accept)
        if self.gate is not None:
            await self.gate.check(upstream, repository, reference, answer.manifest)
        return answer

    async def attachment(
        self, upstream: Upstream, repository: str, reference: str | Digest, accept: list[str]
    ) -> ManifestAnswer:
        """A manifest without the signature policy's verdict: how the policy reads the signatures
        themselves (a signature is not asked for a signature)."""
        answer = await self._answer(upstream, repository, reference, accept)
        upstream.policy.check_digest(answer.manifest.digest)
        await self.guard.link_manifest(upstream, repository, answer.manifest)
        return answer

    async def _answer(
        self, upstream: Upstream, repository: str, reference: str | Digest, accept: list[str]
    ) -> ManifestAnswer:
        accepted = accepted_types(accept)
        fresh = self.fresh(upstream, repository, reference, accepted)
        if fresh is not None:
            return answered(self.stats, fresh, CacheStatus.HIT)
        # Not in memory: one flight per question looks on disk, then asks the upstream. Looking
        # inside the flight also catches an answer that a flight which just ended stored.
        key = (upstream.name, repository, str(reference), accept_key(accepted))
        if isinstance(reference, Digest):
            digest = reference
            upstream.policy.check_digest(str(digest))  # before any upstream request
            return await self._fetches.run(key, lambda: self._by_digest(upstream, repository, digest, accept))
        tag = reference
        self._missing.check(key)  # the upstream said 404 within negative_ttl: said again
        return await self._fetches.run(
            key, lambda: self._missing.remembering(key, self._resolver.resolve(upstream, repository, tag, accept))
        )

    async def _by_digest(
        self, upstream: Upstream, repository: str, digest: Digest, accept: list[str]
    ) -> ManifestAnswer:
        stored = held = await self.manifests.get(digest)
        if held is None:
            stored = await self._from_fleet(str(digest))
        if stored is not None:  # held or shared; but does it belong here?
            await self.guard.check(upstream, repository, digest, manifest=True, accept=accept)
            if held is None:
                await self.manifests.put(digest, stored)  # a shared one is kept once it may be served here
        if stored is not None and admits(accepted_types(accept), stored.media_type):
            return answered(self.stats, stored, CacheStatus.HIT)
        try:
            fetched = await upstream.get_manifest(repository, str(digest), accept)
        except FALLBACK_ERRORS:
            if stored is None:
                raise
            log.warning("upstream %s failed; serving cached manifest %s", upstream.name, digest)
            return answered(self.stats, stored, CacheStatus.STALE)
        if manifest_digest(fetched.body) != str(digest):
            count_manifest(self.stats, CacheStatus.MISS)  # asked the upstream, and got nothing to serve
            self.stats.digest_mismatches += 1
            raise DigestInvalid("upstream manifest does not match the requested digest", detail={"digest": str(digest)})
        manifest = Manifest(str(digest), fetched.media_type, fetched.body)
        await self.manifests.put(digest, manifest)
        await self.coordination.share_manifest(manifest)
        return answered(self.stats, manifest, CacheStatus.MISS)

    async def _from_fleet(self, digest: str) -> Manifest | None:
        """A manifest by digest that another replica shared, or is fetching now (waited for);
        None when this replica is to fetch it (alone, it always is)."""
        shared = await self.coordination.shared_manifest(digest)
        if shared is not None or await self.coordination.claim_manifest_fetch(digest):
            return shared
        return await self.coordination.wait_for(lambda: self.coordination.shared_manifest(digest))
