"""Images fetched through the proxy in the background: `[[prefetch]]` kept warm, re-resolved every
`refresh`; `resolve` and `fetch` are what the pins' keeper (`mirror.pinning`) fetches with too."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mirror.config import PrefetchConfig
from mirror.proxy import Proxy
from mirror.registry.errors import ManifestUnknown, RegistryError
from mirror.registry.mediatypes import ACCEPT_ALL, platform_matches, platform_name
from mirror.registry.reference import parse_digest, parse_image, parse_name, parse_reference
from mirror.upstream import Upstream

UpstreamFor = Callable[[str | None], Upstream]  # a registry host (None: the default) to its upstream

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResolvedImage:
    """An image as the proxy answered it: its manifests (an index and the chosen children) and blobs."""

    upstream: Upstream
    repository: str
    manifests: dict[str, int]  # digest -> size
    blobs: dict[str, int]  # configs and layers, in manifest order: digest -> declared size

    @property
    def digests(self) -> dict[str, int]:
        return {**self.manifests, **self.blobs}


async def resolve(
    proxy: Proxy, upstream: Upstream, repository: str, reference: str, platforms: tuple[str, ...] | None
) -> ResolvedImage:
    """The image's manifests through the proxy (so the upstream's policy and the signature policy
    decide), an index's children of `platforms` only (None: all)."""
    answer = await proxy.manifest(upstream, repository, parse_reference(reference), [ACCEPT_ALL])
    top = json.loads(answer.manifest.body)
    manifests = {answer.manifest.digest: len(answer.manifest.body)}
    images = [top]
    if isinstance(top.get("manifests"), list):
        images = []
        for child in chosen(top["manifests"], platforms):
            child_answer = await proxy.manifest(upstream, repository, parse_digest(child["digest"]), [ACCEPT_ALL])
            manifests[child_answer.manifest.digest] = len(child_answer.manifest.body)
            images.append(json.loads(child_answer.manifest.body))
    blobs: dict[str, int] = {}
    for image in images:
        for descriptor in [image.get("config"), *(image.get("layers") or [])]:
            if isinstance(descriptor, dict) and isinstance(descriptor.get("digest"), str):
                blobs.setdefault(descriptor["digest"], int(descriptor.get("size") or 0))
    return ResolvedImage(upstream, repository, manifests, blobs)


def chosen(children: list[Any], platforms: tuple[str, ...] | None) -> list[dict[str, Any]]:
    """An index's children of these platforms (None: all); ManifestUnknown if one is not there."""
    listed = [c for c in children if isinstance(c, dict) and isinstance(c.get("digest"), str)]
    if platforms is None:
        return listed
    names = [platform_name(c.get("platform")) for c in listed]
    for want in platforms:
        if not any(platform_matches(name, want) for name in names):
            held = ", ".join(name for name in names if name != "unknown/unknown") or "none"
            raise ManifestUnknown(f"the index has no platform {want} (it has {held})")
    return [c for c, name in zip(listed, names, strict=True) if any(platform_matches(name, w) for w in platforms)]


async def fetch(proxy: Proxy, image: ResolvedImage) -> int:
    """Fetch the image's blobs that are not cached, yielding to clients' downloads; returns blobs fetched."""
    fetched = 0
    for digest in image.blobs:
        body = await proxy.blob(image.upstream, image.repository, parse_digest(digest), background=True)
        fetched += await body.settle()
    return fetched


async def warm_once(proxy: Proxy, upstream_for: UpstreamFor, entry: PrefetchConfig) -> int:
    """Resolve the image through the proxy and fetch what is missing; returns blobs fetched."""
    image = parse_image(entry.image)
    upstream = upstream_for(image.registry)
    repository = upstream.repository(parse_name(image.repository))
    return await fetch(proxy, await resolve(proxy, upstream, repository, image.reference, entry.platforms))


async def keep_warm(proxy: Proxy, upstream_for: UpstreamFor, entry: PrefetchConfig) -> None:
    while True:
        try:
            fetched = await warm_once(proxy, upstream_for, entry)
            log.info("prefetch %s: %d blobs fetched", entry.image, fetched)
        except (RegistryError, ValueError, KeyError) as exc:
            log.warning("prefetch %s failed: %s", entry.image, exc)
        await asyncio.sleep(entry.refresh)
