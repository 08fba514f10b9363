"""Which repository a held digest may be served under: linked to it, or confirmed by the upstream.

With anonymous upstreams and no access rules everything cached is public, and nothing is
checked; otherwise private content is held back from the repositories it is not of.
"""

from __future__ import annotations

from mirror.cache.links import BlobLinks
from mirror.cache.metadata import Manifest
from mirror.registry.mediatypes import ACCEPT_ALL
from mirror.registry.reference import Digest
from mirror.upstream import Upstream


class LinkGuard:
    """Serve a cached digest under a repository only once linked to it (when `enforce`)."""

    def __init__(self, links: BlobLinks, *, enforce: bool) -> None:
        self.links = links
        self.enforce = enforce  # changed by a reload

    def allows_in_memory(self, upstream: Upstream, repository: str, digest: str) -> bool:
        """Without I/O: True when the digest may be served there; False when it cannot say now."""
        return not self.enforce or self.links.linked_in_memory(upstream.name, repository, digest)

    async def check(
        self, upstream: Upstream, repository: str, digest: Digest, *, manifest: bool, accept: list[str] | None = None
    ) -> None:
        """A held digest may be served under `repository` if linked to it, or if the upstream says,
        under that repository and with its credential, that it has it there (then it is linked).
        Otherwise the upstream's answer (404, 401, 503) is raised."""
        if not self.enforce:
            return
        if await self.links.linked(upstream.name, repository, str(digest)):
            return
        if manifest:
            await upstream.head_manifest(repository, str(digest), accept or [ACCEPT_ALL])
        else:
            await upstream.head_blob(repository, digest)
        await self.links.link(upstream.name, repository, {str(digest)})

    async def link_manifest(self, upstream: Upstream, repository: str, manifest: Manifest) -> None:
        """A manifest served under `repository`: it, and what it names, belong there."""
        await self.links.link_manifest(upstream.name, repository, manifest.digest, manifest.body)
