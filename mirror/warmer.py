"""`[[prefetch]]`: images kept warm in the background, re-resolved every `refresh`."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING

from mirror.cache.downloads import Download, PassThrough
from mirror.cache.metadata import platform_matches, platform_name
from mirror.commands.prefetch import ACCEPT, parse_image
from mirror.config import PrefetchConfig
from mirror.proxy import CachedBlob
from mirror.registry.errors import RegistryError
from mirror.registry.reference import parse_digest, parse_name, parse_reference

if TYPE_CHECKING:
    from mirror.http.app import Mirror

log = logging.getLogger(__name__)


async def warm_once(mirror: Mirror, entry: PrefetchConfig) -> int:
    """Resolve the image through the proxy and fetch what is missing; returns blobs fetched."""
    image = parse_image(entry.image)
    upstream = mirror.upstreams.get(image.registry or mirror.config.server.default_upstream)
    if upstream is None:
        raise RegistryError(f"prefetch {entry.image}: registry {image.registry} is not configured", code="NAME_UNKNOWN")
    repository = upstream.repository(parse_name(image.repository))
    answer = await mirror.proxy.manifest(upstream, repository, parse_reference(image.reference), [ACCEPT])
    manifests = [json.loads(answer.manifest.body)]
    if isinstance(manifests[0].get("manifests"), list):
        children = [
            m
            for m in manifests[0]["manifests"]
            if entry.platforms is None
            or any(platform_matches(platform_name(m.get("platform")), want) for want in entry.platforms)
        ]
        manifests = []
        for child in children:
            reference = parse_digest(child["digest"])
            child_answer = await mirror.proxy.manifest(upstream, repository, reference, [ACCEPT])
            manifests.append(json.loads(child_answer.manifest.body))
    fetched = 0
    for manifest in manifests:
        for descriptor in [manifest.get("config"), *manifest.get("layers", [])]:
            if not isinstance(descriptor, dict):
                continue
            source, status = await mirror.proxy.blob(upstream, repository, parse_digest(descriptor["digest"]))
            if isinstance(source, CachedBlob):
                source.file.close()
            elif isinstance(source, PassThrough):
                await source.aclose()  # no room to cache it: nothing to warm
            elif isinstance(source, Download) and source.task is not None:
                await asyncio.shield(source.task)
                fetched += status == "MISS"
    return fetched


async def keep_warm(mirror: Mirror, entry: PrefetchConfig) -> None:
    while True:
        try:
            fetched = await warm_once(mirror, entry)
            log.info("prefetch %s: %d blobs fetched", entry.image, fetched)
        except (RegistryError, ValueError, KeyError) as exc:
            log.warning("prefetch %s failed: %s", entry.image, exc)
        await asyncio.sleep(entry.refresh)
