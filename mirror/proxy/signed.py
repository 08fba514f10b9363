"""Serve only what the signature policy accepts: a verdict per manifest, kept warm for tag_ttl.

The policy applies to the upstream's names (`docker.io/library/alpine`), whatever name the
client used. Signatures are looked up through the proxy itself (the cosign `.sig` tag, then
Sigstore bundles among the referrers), so they share its single flight, negative cache, tag
TTL and offline answers. An index the policy accepts accepts its children; a blob is served
under a repository the policy guards only once a manifest it accepted there names it. In
`audit` mode the verdicts are made, logged and counted, and everything is served anyway.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from cachetools import LRUCache

from mirror.cache.metadata import Manifest
from mirror.cache.verdicts import VerdictRecords
from mirror.proxy.answers import Freshness
from mirror.registry.errors import FALLBACK_ERRORS, Denied, RegistryError
from mirror.registry.mediatypes import INDEX_TYPES, required_digests
from mirror.registry.reference import Digest, parse_digest
from mirror.signatures.material import Candidate, is_attachment
from mirror.signatures.policy import Policy
from mirror.signatures.verify import Verdict, decide
from mirror.transfer.flights import SingleFlight
from mirror.upstream import Upstream

log = logging.getLogger(__name__)

MAX_VERDICTS = 20_000
MAX_ALLOWED_BLOBS = 50_000


class Signatures(Protocol):
    """The signatures of one manifest: cosign's (cheap when warm), then every format."""

    async def cosign(self) -> list[Candidate]: ...

    async def everything(self) -> list[Candidate]: ...


# How the gate finds a manifest's signatures: through the proxy (`mirror.proxy.attachments`).
Lookup = Callable[[Upstream, str, Digest], Awaitable[Signatures]]


@dataclass(frozen=True)
class Decided:
    verdict: Verdict
    at: float  # time.time() it was decided (or its index's)


class SignatureGate:
    """The policy's verdicts on manifests, and which blobs they let through."""

    def __init__(
        self, *, policy: Policy, mode: str, lookup: Lookup, freshness: Freshness, records: VerdictRecords
    ) -> None:
        self.policy = policy
        self.mode = mode
        self._lookup = lookup
        self._records = records
        self._freshness = freshness
        self._verdicts: LRUCache[tuple[str, str, str], Decided] = LRUCache(MAX_VERDICTS)
        self._children: LRUCache[tuple[str, str, str], Decided] = LRUCache(MAX_VERDICTS)
        self._blobs: LRUCache[tuple[str, str, str], bool] = LRUCache(MAX_ALLOWED_BLOBS)
        self._flights: SingleFlight[tuple[str, str, str], Decided] = SingleFlight()
        self._open: dict[str, bool] = {}  # repository name -> its every scope accepts anything
        # (upstream, repository, reference, digest) -> when the verdict that lets it through was made
        self._passed: dict[tuple[str, str, str | Digest, str], float] = {}

    def guards(self, name: str) -> bool:
        """True when the policy asks more than insecureAcceptAnything of some image of repository `name`."""
        open_ = self._open.get(name)
        if open_ is None:
            if len(self._open) >= MAX_VERDICTS:
                self._open.clear()
            open_ = self._open[name] = self.policy.repository_accepts_anything(name)
        return not open_

    def reconfigure(self, policy: Policy, mode: str) -> None:
        """A reload: another policy re-decides everything; another mode only serves differently."""
        if policy != self.policy or mode != self.mode:
            self._passed.clear()
        if policy != self.policy:
            self._open.clear()
            self._verdicts.clear()
            self._children.clear()
            self._blobs.clear()
        self.policy = policy
        self.mode = mode

    @property
    def enforcing(self) -> bool:
        return self.mode == "enforce"

    def name_of(self, upstream: Upstream, repository: str) -> str:
        return f"{upstream.name}/{repository}"

    def allows_in_memory(self, upstream: Upstream, repository: str, reference: str | Digest, digest: str) -> bool:
        """Without I/O: True when a fresh verdict lets this manifest through; False when one must be made.

        The fast path asks this for every warm request: one lookup when the answer is yes."""
        passed = self._passed.get((upstream.name, repository, reference, digest))
        if passed is not None and self._freshness.fresh(passed, time.time()):
            return True
        if not self.guards(self.name_of(upstream, repository)):
            return True
        decided = self._decided(upstream, repository, reference, digest)
        return decided is not None and (decided.verdict.accepted or not self.enforcing)

    async def check(self, upstream: Upstream, repository: str, reference: str | Digest, manifest: Manifest) -> None:
        """Refuse (Denied) a manifest the policy does not accept, when enforcing."""
        name = self.name_of(upstream, repository)
        if not self.guards(name):
            return
        if is_attachment(manifest.body):
            self._accept_contents(upstream, repository, manifest, None)  # a signature is read, never run
            return
        decided = self._decided(upstream, repository, reference, manifest.digest)
        if decided is None:
            key = (name, str(reference), manifest.digest)
            decided = await self._flights.run(key, lambda: self._decide(upstream, repository, reference, manifest))
        if decided.verdict.accepted or not self.enforcing:
            if len(self._passed) >= MAX_VERDICTS:
                self._passed.clear()
            self._passed[(upstream.name, repository, reference, manifest.digest)] = decided.at
        if decided.verdict.accepted:
            self._accept_contents(upstream, repository, manifest, decided)
        elif self.enforcing:
            raise Denied(
                f"{decided.verdict.reason} (signature policy {self.policy.source}, scope {decided.verdict.scope!r})",
                detail={"name": name, "digest": manifest.digest, "scope": decided.verdict.scope},
            )

    def blob_allowed(self, upstream: Upstream, repository: str, digest: Digest) -> bool:
        """A blob may be served under `repository`: the policy guards nothing there, or a manifest it
        accepted there names the blob (in audit mode, always)."""
        name = self.name_of(upstream, repository)
        if not self.enforcing or not self.guards(name):
            return True
        return self._blobs.get((upstream.name, repository, str(digest)), False)

    def _decided(self, upstream: Upstream, repository: str, reference: str | Digest, digest: str) -> Decided | None:
        name = self.name_of(upstream, repository)
        now = time.time()
        for held in (self._verdicts.get((name, str(reference), digest)), self._children.get((name, "", digest))):
            if held is not None and self._freshness.fresh(held.at, now):
                return held
        return None

    async def _decide(
        self, upstream: Upstream, repository: str, reference: str | Digest, manifest: Manifest
    ) -> Decided:
        name = self.name_of(upstream, repository)
        scope, requirements = self.policy.requirements_for(name, str(reference))
        try:
            source = await self._lookup(upstream, repository, parse_digest(manifest.digest))
            verdict = decide(self.policy, name, str(reference), manifest.digest, await source.cosign())
            if not verdict.accepted and any(r.type == "sigstoreSigned" for r in requirements):
                verdict = decide(self.policy, name, str(reference), manifest.digest, await source.everything())
        except (*FALLBACK_ERRORS, RegistryError) as exc:
            # Cannot look: refused, and not kept, so the next request looks again.
            verdict = Verdict(False, scope, f"the signatures of {name}@{manifest.digest} could not be read: {exc}")
            self._count(upstream, verdict)
            return Decided(verdict, 0.0)
        decided = Decided(verdict, time.time())
        self._verdicts[(name, str(reference), manifest.digest)] = decided
        self._count(upstream, verdict)
        row = {
            "accepted": verdict.accepted,
            "signed": verdict.signed,
            "reason": verdict.reason,
            "by": verdict.by,
            "scope": verdict.scope,
            "policy": self.policy.source,
            "mode": self.mode,
            "at": decided.at,
        }
        await self._records.record(upstream.name, repository, manifest.digest, row)
        log.log(
            logging.INFO if verdict.accepted else logging.WARNING,
            "signature policy %s %s@%s (%s): %s%s",
            "accepted" if verdict.accepted else "refused",
            name,
            manifest.digest,
            f"scope {verdict.scope!r}",
            verdict.reason,
            "" if verdict.accepted or self.enforcing else " (audit mode: served anyway)",
        )
        return decided

    def _accept_contents(
        self, upstream: Upstream, repository: str, manifest: Manifest, decided: Decided | None
    ) -> None:
        """An accepted index accepts its children; an accepted manifest (or a signature, `decided`
        None) lets its blobs through."""
        try:
            parsed = json.loads(manifest.body)
        except ValueError:
            return
        named = required_digests(parsed)
        if manifest.media_type in INDEX_TYPES and decided is not None:
            name = self.name_of(upstream, repository)
            child = Verdict(True, decided.verdict.scope, f"{decided.verdict.reason}, by its index {manifest.digest}")
            for digest in named:
                self._children[(name, "", digest)] = Decided(child, decided.at)
            return
        for digest in named:
            self._blobs[(upstream.name, repository, digest)] = True

    def _count(self, upstream: Upstream, verdict: Verdict) -> None:
        result = "accepted" if verdict.accepted else "refused" if self.enforcing else "audited"
        upstream.counters.verdict(result)
