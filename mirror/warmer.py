"""`[[prefetch]]`: images kept warm in the background, re-resolved every `refresh`."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

from mirror.config import PrefetchConfig
from mirror.proxy import Proxy
from mirror.registry.errors import RegistryError
from mirror.registry.mediatypes import ACCEPT_ALL, platform_matches, platform_name
from mirror.registry.reference import parse_digest, parse_image, parse_name, parse_reference
from mirror.upstream import Upstream

UpstreamFor = Callable[[str | None], Upstream]  # a registry host (None: the default) to its upstream

log = logging.getLogger(__name__)


async def warm_once(proxy: Proxy, upstream_for: UpstreamFor, entry: PrefetchConfig) -> int:
    """Resolve the image through the proxy and fetch what is missing; returns blobs fetched."""
    image = parse_image(entry.image)
    upstream = upstream_for(image.registry)
    repository = upstream.repository(parse_name(image.repository))
    answer = await proxy.manifest(upstream, repository, parse_reference(image.reference), [ACCEPT_ALL])
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
            child_answer = await proxy.manifest(upstream, repository, reference, [ACCEPT_ALL])
            manifests.append(json.loads(child_answer.manifest.body))
    fetched = 0
    for manifest in manifests:
        for descriptor in [manifest.get("config"), *manifest.get("layers", [])]:
            if not isinstance(descriptor, dict):
                continue
            body = await proxy.blob(upstream, repository, parse_digest(descriptor["digest"]), background=True)
            fetched += await body.settle()
    return fetched


async def keep_warm(proxy: Proxy, upstream_for: UpstreamFor, entry: PrefetchConfig) -> None:
    while True:
        try:
            fetched = await warm_once(proxy, upstream_for, entry)
            log.info("prefetch %s: %d blobs fetched", entry.image, fetched)
        except (RegistryError, ValueError, KeyError) as exc:
            log.warning("prefetch %s failed: %s", entry.image, exc)
        await asyncio.sleep(entry.refresh)
