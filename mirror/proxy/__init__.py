"""The pull-through decisions: local first, else the upstream (or another replica), by object kind.

`Proxy` is the face the routes, the fast path and the warmer use; behind it, as CNCF
distribution's `registry/proxy` splits them: `manifests` (by digest) and `tags` (a tag's
answer, revalidated), `blobs` (where a blob's bytes come from), `lists` (tag lists, referrers).
Other replicas are reached only through `coordination`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mirror.cache.blobs import BlobStore
from mirror.cache.journal import TagJournal
from mirror.cache.kept import KeptLists
from mirror.cache.links import BlobLinks
from mirror.cache.metadata import Manifest, ManifestCache
from mirror.cache.tags import TagStore
from mirror.cache.verdicts import VerdictRecords
from mirror.proxy.ahead import FetchAhead
from mirror.proxy.answers import CacheStatus, Freshness, ManifestAnswer
from mirror.proxy.blobs import BlobProxy, BlobSource, SourceFor
from mirror.proxy.bodies import BlobBody
from mirror.proxy.coordination import Alone, Coordination
from mirror.proxy.links import LinkGuard
from mirror.proxy.lists import ListProxy
from mirror.proxy.manifests import ManifestProxy
from mirror.registry.reference import Digest
from mirror.stats import Stats
from mirror.transfer.inflight import InflightDownloads
from mirror.upstream import Upstream

if TYPE_CHECKING:
    from mirror.proxy.signed import SignatureGate
    from mirror.signatures.policy import Policy  # loaded only with [signatures]

__all__ = ["BlobBody", "BlobSource", "CacheStatus", "ManifestAnswer", "Proxy", "SignaturePolicy"]


@dataclass(frozen=True)
class SignaturePolicy:
    """What [signatures] says: the policy, read whole, and enforce or audit."""

    policy: Policy
    mode: str


def _upstream_itself(upstream: Upstream) -> BlobSource:
    return upstream


class Proxy:
    """Manifests, blobs and lists, each through its own part; built once by the composition root."""

    def __init__(
        self,
        *,
        store: BlobStore,
        manifests: ManifestCache,
        tags: TagStore,
        journal: TagJournal,
        kept_lists: KeptLists,
        links: BlobLinks,
        inflight: InflightDownloads,
        stats: Stats,
        tag_ttl: float,
        negative_ttl: float,
        enforce_links: bool,
        coordination: Coordination | None = None,
        source_for: SourceFor = _upstream_itself,
        signatures: SignaturePolicy | None = None,
        verdicts: VerdictRecords | None = None,
        fetch_ahead: bool = True,
    ) -> None:
        self.freshness = Freshness(tag_ttl)
        # Serve a cached digest under a repository only once linked to it (private content is held).
        self.guard = LinkGuard(links, enforce=enforce_links)
        self.manifests = ManifestProxy(
            manifests=manifests,
            tags=tags,
            journal=journal,
            coordination=coordination or Alone(),
            guard=self.guard,
            freshness=self.freshness,
            stats=stats,
            negative_ttl=negative_ttl,
        )
        self.ahead = FetchAhead(enabled=fetch_ahead)
        self.blobs = BlobProxy(
            store=store, inflight=inflight, guard=self.guard, source_for=source_for, stats=stats, ahead=self.ahead
        )
        self.lists = ListProxy(kept_lists=kept_lists, manifests=self.manifests, freshness=self.freshness)
        self.gate: SignatureGate | None = None
        self._verdicts = verdicts
        self._set_signatures(signatures)

    def reconfigure(
        self,
        *,
        tag_ttl: float,
        enforce_links: bool,
        signatures: SignaturePolicy | None = None,
        fetch_ahead: bool = True,
    ) -> None:
        """A reload: what the proxy's parts share changes for all of them at once."""
        self.freshness.tag_ttl = tag_ttl
        self.guard.enforce = enforce_links
        self.ahead.enabled = fetch_ahead
        self._set_signatures(signatures)

    def _set_signatures(self, signatures: SignaturePolicy | None) -> None:
        """The signature policy on (its gate built at the first), changed, or off."""
        if signatures is None:
            self.gate = None
        elif self.gate is None:
            from mirror.proxy.attachments import Attachments  # only with a policy: they load cryptography
            from mirror.proxy.signed import SignatureGate

            attachments = Attachments(manifests=self.manifests, lists=self.lists, blobs=self.blobs)
            if self._verdicts is None:
                raise ValueError("a signature policy needs somewhere to record its verdicts")
            self.gate = SignatureGate(
                policy=signatures.policy,
                mode=signatures.mode,
                lookup=attachments,
                freshness=self.freshness,
                records=self._verdicts,
            )
        else:
            self.gate.reconfigure(signatures.policy, signatures.mode)
        self.manifests.gate = self.blobs.gate = self.gate

    def fresh_manifest(
        self, upstream: Upstream, repository: str, reference: str | Digest, accepted: frozenset[str]
    ) -> Manifest | None:
        """A fresh answer held in memory, without I/O (the fast path's), or None."""
        manifest = self.manifests.fresh(upstream, repository, reference, accepted)
        if manifest is not None:
            self.ahead.served(upstream.name, repository, manifest)
        return manifest

    async def manifest(
        self, upstream: Upstream, repository: str, reference: str | Digest, accept: list[str]
    ) -> ManifestAnswer:
        """A manifest for a client: a layer of it asked for next starts the rest (fetch ahead)."""
        answer = await self.manifests.manifest(upstream, repository, reference, accept)
        self.ahead.served(upstream.name, repository, answer.manifest)
        return answer

    async def blob(self, upstream: Upstream, repository: str, digest: Digest, *, background: bool = False) -> BlobBody:
        return await self.blobs.blob(upstream, repository, digest, background=background)

    async def blob_size(self, upstream: Upstream, repository: str, digest: Digest) -> int | None:
        return await self.blobs.size(upstream, repository, digest)

    async def local_blob(self, digest: Digest) -> BlobBody | None:
        return await self.blobs.local(digest)

    async def tag_list(self, upstream: Upstream, repository: str) -> tuple[str, ...]:
        return await self.lists.tag_list(upstream, repository)

    async def referrers(self, upstream: Upstream, repository: str, digest: Digest) -> tuple[dict[str, Any], ...]:
        return await self.lists.referrers(upstream, repository, digest)
