"""A tag's answer: fresh for tag_ttl, then revalidated with a HEAD, and served stale when the
upstream fails; a tag the upstream said it lacks is remembered as missing for negative_ttl."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable

from cachetools import TTLCache

from mirror.cache.journal import TagJournal
from mirror.cache.layout import TagEntry
from mirror.cache.metadata import Manifest, ManifestCache, manifest_digest, same_answer
from mirror.cache.tags import TagStore
from mirror.proxy.answers import CacheStatus, Freshness, ManifestAnswer, answered, count_manifest
from mirror.proxy.coordination import Coordination
from mirror.registry.errors import FALLBACK_ERRORS, DigestInvalid, ManifestUnknown, RegistryError
from mirror.registry.mediatypes import accept_key, accepted_types, admits
from mirror.registry.reference import parse_digest
from mirror.stats import Stats
from mirror.upstream import Upstream

log = logging.getLogger(__name__)

# Tags remembered as missing (each for negative_ttl), at most.
MISSING_KEPT = 10_000

# The upstream's answers for a tag it deleted: with keep_deleted_tags, the cached one is served.
_DELETED_CODES = frozenset({"MANIFEST_UNKNOWN", "NAME_UNKNOWN"})

# A question: upstream, repository, tag and Accept class.
Question = tuple[str, str, str, str]


class MissingTags:
    """Tags the upstream said it does not have (404): cosign probes `sha256-<hex>.sig` and friends
    for every image, and is told no. Each is said again from memory for negative_ttl."""

    def __init__(self, negative_ttl: float, stats: Stats) -> None:
        self._stats = stats
        self._missing: TTLCache[Question, RegistryError] | None = (
            TTLCache(MISSING_KEPT, negative_ttl) if negative_ttl > 0 else None
        )

    def check(self, question: Question) -> None:
        """Raise the upstream's remembered "no" for this question, if it is remembered."""
        missing = self._missing.get(question) if self._missing is not None else None
        if missing is not None:
            self._stats.negative_hits += 1
            # The same kind of error as the upstream's (ManifestUnknown stays ManifestUnknown), new each time.
            raise type(missing)(
                missing.message,
                code=missing.code,
                status=missing.status,
                detail=missing.detail,
                headers=missing.headers,
            )

    async def remembering(self, question: Question, answer: Awaitable[ManifestAnswer]) -> ManifestAnswer:
        """The answer; a definite "no" is remembered (never 401: credentials, 429: quota, nor 5xx:
        the upstream's trouble)."""
        try:
            return await answer
        except RegistryError as exc:
            if exc.status == 404 and self._missing is not None:
                self._missing[question] = exc
            raise


class TagResolver:
    """One tag's question to the upstream, asked by one replica of a fleet at a time."""

    def __init__(
        self,
        *,
        manifests: ManifestCache,
        tags: TagStore,
        journal: TagJournal,
        coordination: Coordination,
        freshness: Freshness,
        stats: Stats,
    ) -> None:
        self.manifests = manifests
        self.tags = tags
        self.journal = journal
        self.coordination = coordination
        self.freshness = freshness
        self.stats = stats

    async def resolve(self, upstream: Upstream, repository: str, tag: str, accept: list[str]) -> ManifestAnswer:
        accepted = accepted_types(accept)
        entries = await self.tags.tag_entries(upstream.name, repository, tag, reload=True)
        entry = answer_for(entries, accepted)
        if entry is not None and self.freshness.fresh(entry.fetched_at, time.time()):
            cached = await self._held_or_shared(entry.digest)
            if cached is not None:
                return answered(self.stats, cached, CacheStatus.HIT)
        ttl = self.freshness.tag_ttl
        if not await self.coordination.claim_tag_refresh(upstream.name, repository, tag, ttl):
            # Another replica of the fleet asks the upstream for this tag: wait for its answer.
            shared = await self._answer_from_fleet(upstream, repository, tag, accepted, entry)
            if shared is not None:
                return shared
        try:
            if entry is not None and (revalidated := await self._revalidate(upstream, repository, tag, accept, entry)):
                return revalidated
            fetched = await upstream.get_manifest(repository, tag, accept)
        except (*FALLBACK_ERRORS, ManifestUnknown) as exc:
            return await self._stale_or_raise(exc, upstream, repository, tag, entries, entry, accepted)
        digest = manifest_digest(fetched.body)
        if fetched.digest is not None and fetched.digest != digest:
            count_manifest(self.stats, CacheStatus.MISS)  # asked the upstream, and got nothing to serve
            self.stats.digest_mismatches += 1
            raise DigestInvalid(
                "upstream manifest does not match its Docker-Content-Digest", detail={"digest": fetched.digest}
            )
        manifest = Manifest(digest, fetched.media_type, fetched.body)
        await self.manifests.put(parse_digest(digest), manifest)
        if entry is not None and entry.digest != digest and upstream.policy.immutable_tags.match(tag):
            return await self._keep(upstream, repository, tag, accepted, entry, digest)
        if fetched.stale is not None:
            # Served stale by a mirror upstream: kept, but already expired, so the next request asks again.
            age = max(fetched.stale.age, ttl)
            await self._remember(upstream, repository, tag, accepted, manifest, entry, time.time() - age)
            return answered(self.stats, manifest, CacheStatus.STALE, fetched.stale.age, fetched.quota, fetched=True)
        await self._remember(upstream, repository, tag, accepted, manifest, entry)
        return answered(self.stats, manifest, CacheStatus.MISS, upstream_headers=fetched.quota)

    async def _revalidate(
        self, upstream: Upstream, repository: str, tag: str, accept: list[str], entry: TagEntry
    ) -> ManifestAnswer | None:
        """The cached answer, if the upstream's HEAD names the same digest; else None (fetch it)."""
        head = await upstream.head_manifest(repository, tag, accept)
        if head.digest != entry.digest:
            if head.digest is not None and await self._moved_before(upstream, repository, tag, head.digest):
                # An immutable tag the upstream moved to a digest already journalled: no GET again.
                return await self._keep(upstream, repository, tag, accepted_types(accept), entry, head.digest)
            return None
        cached = await self.manifests.get(parse_digest(entry.digest))
        if cached is None:
            return None
        if head.stale is not None:
            # A mirror upstream could not revalidate it either: stale here too, not fresh again.
            return answered(self.stats, cached, CacheStatus.STALE, head.stale.age, head.quota)
        await self._remember(upstream, repository, tag, accepted_types(accept), cached, entry)
        return answered(self.stats, cached, CacheStatus.REVALIDATED, upstream_headers=head.quota)

    async def _moved_before(self, upstream: Upstream, repository: str, tag: str, digest: str) -> bool:
        return bool(upstream.policy.immutable_tags.match(tag)) and await self.journal.seen(
            upstream.name, repository, tag, digest
        )

    async def _keep(
        self,
        upstream: Upstream,
        repository: str,
        tag: str,
        accepted: frozenset[str],
        entry: TagEntry,
        moved_to: str,
    ) -> ManifestAnswer:
        """An immutable tag the upstream moved: the digest the mirror has served stays, fresh for
        tag_ttl again; the move is journalled, and logged and counted once per new digest.
        The kept manifest no longer cached: refused, never the moved one served instead."""
        rule = upstream.policy.immutable_tags.match(tag)
        kept = await self.manifests.get(parse_digest(entry.digest))
        if kept is None:
            raise ManifestUnknown(
                f"{repository}:{tag} is immutable here (immutable_tags {rule!r}) but its digest {entry.digest} "
                f"is no longer cached; `mirror tag accept` takes the upstream's {moved_to}"
            )
        if await self.journal.saw(upstream.name, repository, tag, moved_to):
            upstream.counters.tag_moves += 1
            log.warning(
                "upstream %s moved %s:%s from %s to %s; immutable_tags %r keeps %s "
                "(mirror tag accept takes the new one)",
                upstream.name,
                repository,
                tag,
                entry.digest,
                moved_to,
                rule,
                entry.digest,
            )
        fresh = TagEntry(entry.digest, entry.media_type, time.time(), entry.imported)
        await self.tags.set_tag(upstream.name, repository, tag, accept_key(accepted), fresh)
        return answered(self.stats, kept, CacheStatus.HIT)

    async def _stale_or_raise(
        self,
        exc: RegistryError,
        upstream: Upstream,
        repository: str,
        tag: str,
        entries: dict[str, TagEntry],
        entry: TagEntry | None,
        accepted: frozenset[str],
    ) -> ManifestAnswer:
        """The upstream failed, or has no such tag: the newest cached answer, STALE, when one may serve."""
        deleted = isinstance(exc, ManifestUnknown) and exc.code in _DELETED_CODES
        if isinstance(exc, ManifestUnknown) and not (deleted and upstream.policy.keep_deleted_tags):
            raise exc
        stale = await self._newest_cached(entries, entry, accepted)
        if stale is None:
            raise exc
        if deleted:
            log.warning("upstream %s no longer has %s:%s; keeping the cached one", upstream.name, repository, tag)
        else:
            log.warning("upstream %s failed (%s); serving cached %s:%s", upstream.name, exc.message, repository, tag)
        manifest, fetched_at = stale
        return answered(self.stats, manifest, CacheStatus.STALE, max(0.0, time.time() - fetched_at))

    async def _answer_from_fleet(
        self, upstream: Upstream, repository: str, tag: str, accepted: frozenset[str], old: TagEntry | None
    ) -> ManifestAnswer | None:
        """The answer another replica fetched (waited for); the old one, STALE, when it gives none
        in time; None when there is nothing to serve (then this replica asks itself)."""

        async def newer() -> Manifest | None:
            entries = await self.tags.tag_entries(upstream.name, repository, tag, reload=True)
            entry = answer_for(entries, accepted)
            if entry is not None and (old is None or entry.fetched_at > old.fetched_at):
                return await self._held_or_shared(entry.digest)
            return None

        if (cached := await self.coordination.wait_for(newer)) is not None:
            return answered(self.stats, cached, CacheStatus.HIT)
        if old is not None and (cached := await self.manifests.get(parse_digest(old.digest))) is not None:
            return answered(self.stats, cached, CacheStatus.STALE, max(0.0, time.time() - old.fetched_at))
        return None

    async def _held_or_shared(self, digest: str) -> Manifest | None:
        """A manifest from this cache, else as another replica of the fleet shared it (checked, then kept)."""
        held = await self.manifests.get(parse_digest(digest))
        if held is not None:
            return held
        shared = await self.coordination.shared_manifest(digest)
        if shared is not None:
            await self.manifests.put(parse_digest(digest), shared)
        return shared

    async def _remember(
        self,
        upstream: Upstream,
        repository: str,
        tag: str,
        accepted: frozenset[str],
        manifest: Manifest,
        before: TagEntry | None,
        fetched_at: float | None = None,
    ) -> None:
        """The upstream's answer for the tag: kept, shared, journalled; a move from `before` logged and counted."""
        entry = TagEntry(manifest.digest, manifest.media_type, time.time() if fetched_at is None else fetched_at)
        await self.coordination.share_manifest(manifest)
        await self.tags.set_tag(upstream.name, repository, tag, accept_key(accepted), entry)
        await self.journal.saw(upstream.name, repository, tag, manifest.digest)
        if before is not None and before.digest != manifest.digest:
            upstream.counters.tag_moves += 1
            log.warning(
                "upstream %s moved %s:%s from %s to %s", upstream.name, repository, tag, before.digest, manifest.digest
            )

    async def _newest_cached(
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


def answer_for(entries: dict[str, TagEntry], accepted: frozenset[str]) -> TagEntry | None:
    """The newest cached answer for this tag that the upstream would also give this client."""
    exact = entries.get(accept_key(accepted))
    if exact is not None:
        return exact
    shared = [e for key, e in entries.items() if same_answer(key, e.media_type, accepted)]
    return max(shared, key=lambda e: e.fetched_at, default=None)
