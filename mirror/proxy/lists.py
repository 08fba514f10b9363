"""Answers that are lists: a repository's tags and a digest's referrers, kept whole for tag_ttl."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from mirror.cache.kept import KeptLists
from mirror.cache.layout import referrers_key, taglist_key
from mirror.proxy.answers import Freshness
from mirror.proxy.manifests import ManifestProxy
from mirror.registry.errors import FALLBACK_ERRORS, ManifestUnknown
from mirror.registry.mediatypes import ACCEPT_ALL, OCI_INDEX
from mirror.registry.paging import lexical
from mirror.registry.reference import Digest, parse_digest
from mirror.registry.referrers import fallback_tag, index_descriptors, with_artifact_type
from mirror.transfer.flights import SingleFlight
from mirror.upstream import Upstream

log = logging.getLogger(__name__)


class ListProxy:
    """Tag lists and referrers; the referrers' fallback tag is read through the manifest proxy."""

    def __init__(self, *, kept_lists: KeptLists, manifests: ManifestProxy, freshness: Freshness) -> None:
        self.kept_lists = kept_lists
        self.manifests = manifests
        self.freshness = freshness
        self._fetches: SingleFlight[str, tuple[Any, ...]] = SingleFlight()

    async def tag_list(self, upstream: Upstream, repository: str) -> tuple[str, ...]:
        """A repository's whole tag list in the spec's order."""

        async def fetch() -> list[str]:
            return sorted(set(await upstream.all_tags(repository)), key=lexical)

        return await self._kept(upstream, taglist_key(upstream.name, repository), fetch)

    # Referrers

    async def referrers(self, upstream: Upstream, repository: str, digest: Digest) -> tuple[dict[str, Any], ...]:
        """The descriptors of what refers to `digest`: the upstream's referrers API, or else the
        spec's fallback tag `<alg>-<hex>`; none only when the upstream has neither."""

        async def fetch() -> list[dict[str, Any]]:
            listed = await upstream.referrers(repository, digest)
            if listed is not None:
                return listed
            try:
                # A list of what refers to the digest, never run: read without the signature policy's verdict.
                answer = await self.manifests.attachment(upstream, repository, fallback_tag(digest), [OCI_INDEX])
            except ManifestUnknown:
                return []
            return await self._described(upstream, repository, index_descriptors(answer.manifest.body))

        return await self._kept(upstream, referrers_key(upstream.name, repository, str(digest)), fetch)

    async def _described(
        self, upstream: Upstream, repository: str, descriptors: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Fill in each descriptor's artifactType, as the spec requires, from the referrer's manifest."""
        described = []
        for descriptor in descriptors:
            if "artifactType" not in descriptor:
                answer = await self.manifests.attachment(
                    upstream, repository, parse_digest(descriptor["digest"]), [ACCEPT_ALL]
                )
                descriptor = with_artifact_type(descriptor, answer.manifest.body)
            described.append(descriptor)
        return described

    async def _kept(self, upstream: Upstream, key: str, fetch: Callable[[], Awaitable[list[Any]]]) -> tuple[Any, ...]:
        """A list answer: kept for tag_ttl, one fetch at a time, served stale when the upstream fails."""
        kept = self.kept_lists.get_in_memory(key)
        if kept is not None and self.freshness.fresh(kept.fetched_at, time.time()):
            return kept.items

        async def refresh() -> tuple[Any, ...]:
            kept = await self.kept_lists.get(key)
            if kept is not None and self.freshness.fresh(kept.fetched_at, time.time()):
                return kept.items
            try:
                items = await fetch()
            except FALLBACK_ERRORS as exc:
                if kept is None:
                    raise
                log.warning("upstream %s failed (%s); serving the cached %s", upstream.name, exc.message, key)
                return kept.items
            return (await self.kept_lists.put(key, items)).items

        return await self._fetches.run(key, refresh)
