"""The signatures attached to a manifest, read through the proxy like anything else.

cosign's `sha256-<hex>.sig` tag goes through the tag path (tag_ttl, the negative cache, stale
answers offline); Sigstore bundles are found among the referrers (kept for tag_ttl too). Their
manifests and small blobs are cached, so an imported signature is there offline. Sizes are
bounded before anything is fetched: a signature image names its layers' sizes.
"""

from __future__ import annotations

import json

from mirror.proxy.blobs import BlobProxy
from mirror.proxy.lists import ListProxy
from mirror.proxy.manifests import ManifestProxy
from mirror.registry.errors import ManifestUnknown
from mirror.registry.mediatypes import DOCKER_MANIFEST, OCI_MANIFEST
from mirror.registry.reference import Digest, parse_digest
from mirror.registry.referrers import SIGSTORE_BUNDLE, cosign_signature_tag, is_sigstore_bundle
from mirror.signatures.material import (
    MAX_BUNDLE,
    MAX_PAYLOAD,
    MAX_SIGNATURES,
    SIMPLE_SIGNING,
    Candidate,
    bundle_candidates,
    cosign_candidates,
    small_layer,
)
from mirror.upstream import Upstream

SIGNATURE_ACCEPT = [OCI_MANIFEST, DOCKER_MANIFEST]
MAX_REFERRERS = 64  # bundles looked at per manifest


class Attachments:
    """Finds the signatures of a manifest digest, in both formats."""

    def __init__(self, *, manifests: ManifestProxy, lists: ListProxy, blobs: BlobProxy) -> None:
        self.manifests = manifests
        self.lists = lists
        self.blobs = blobs

    async def __call__(self, upstream: Upstream, repository: str, digest: Digest) -> SignatureSource:
        return SignatureSource(self, upstream, repository, digest)


class SignatureSource:
    """The signatures of one manifest: cosign's first (one request when warm), bundles when asked."""

    def __init__(self, attachments: Attachments, upstream: Upstream, repository: str, digest: Digest) -> None:
        self._parts = attachments
        self._upstream = upstream
        self._repository = repository
        self._digest = digest
        self._cosign: list[Candidate] | None = None

    async def cosign(self) -> list[Candidate]:
        if self._cosign is None:
            self._cosign = await self._read_cosign()
        return self._cosign

    async def everything(self) -> list[Candidate]:
        return [*await self.cosign(), *await self._read_bundles()]

    async def _read_cosign(self) -> list[Candidate]:
        tag = cosign_signature_tag(self._digest)
        try:
            answer = await self._parts.manifests.attachment(self._upstream, self._repository, tag, SIGNATURE_ACCEPT)
        except ManifestUnknown:
            return []  # unsigned in cosign's format: said once, remembered for negative_ttl
        body = answer.manifest.body
        payloads = {}
        for layer in _layers(body, SIMPLE_SIGNING, MAX_PAYLOAD):
            payloads[layer] = await self._read_blob(layer, MAX_PAYLOAD)
        return cosign_candidates(tag, body, payloads)

    async def _read_bundles(self) -> list[Candidate]:
        descriptors = await self._parts.lists.referrers(self._upstream, self._repository, self._digest)
        found = []
        bundles = [d for d in descriptors if is_sigstore_bundle(d)]
        for descriptor in bundles[:MAX_REFERRERS]:
            origin = f"the bundle {descriptor.get('digest')}"
            try:
                referrer = parse_digest(str(descriptor.get("digest")))
                answer = await self._parts.manifests.attachment(
                    self._upstream, self._repository, referrer, [OCI_MANIFEST]
                )
            except ManifestUnknown:
                continue
            for layer in _layers(answer.manifest.body, SIGSTORE_BUNDLE, MAX_BUNDLE)[:1]:
                data = await self._read_blob(layer, MAX_BUNDLE)
                found += bundle_candidates(origin, data, str(self._digest))
        return found

    async def _read_blob(self, digest: str, limit: int) -> bytes:
        """A signature's small blob, through the cache; at most `limit` bytes are ever read."""
        body = await self._parts.blobs.blob(self._upstream, self._repository, parse_digest(digest), attachment=True)
        try:
            size = await body.size(wait=True)
            if size is None or size > limit:
                return b""
            chunks = []
            async for chunk in body.iter_range(0, size):
                chunks.append(bytes(chunk))
            return b"".join(chunks)
        finally:
            await body.aclose()


def _layers(body: bytes, media_type: str, limit: int) -> list[str]:
    """The digests of a signature manifest's layers of `media_type`, each at most `limit` bytes."""
    try:
        layers = json.loads(body)["layers"]
    except (ValueError, KeyError, TypeError):
        return []
    if not isinstance(layers, list):
        return []
    return [
        str(layer["digest"])
        for layer in layers[:MAX_SIGNATURES]
        if small_layer(layer, media_type, limit) and isinstance(layer.get("digest"), str)
    ]
