"""Fetch ahead: once a client starts on an image, the rest of its blobs are on their way.

Docker and containerd fetch three blobs at a time in manifest order, and each round waits for
its slowest layer. The mirror knows the whole image from the manifest it just served: when a
client then asks for one of its layers under that repository, every other blob of the manifest
is started at once (in manifest order, after the client's own), within the upstream's
connection cap. A manifest fetched alone (`skopeo inspect`, tag watchers) starts nothing, nor
does its config blob alone. A fetch no client claims is still completed and verified: the bytes
are paid for.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from cachetools import LRUCache

from mirror.cache.metadata import Manifest
from mirror.registry.mediatypes import INDEX_TYPES

WINDOW = 600.0  # a served manifest starts the rest of its image if a client starts on it within this
MAX_BLOBS = 256  # per image: a manifest naming more is left to its client
MAX_REPOSITORIES = 4096
MAX_PER_REPOSITORY = 16  # manifests served lately under one repository, the newest kept


@dataclass
class Served:
    """An image manifest a client was just given, and whether its blobs were started."""

    config: str | None
    layers: tuple[str, ...]
    at: float
    started: bool = False


class FetchAhead:
    """Which image manifests clients were just served; which blobs to start when they start on one."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled  # changed by a reload
        self._served: LRUCache[tuple[str, str], dict[str, Served]] = LRUCache(MAX_REPOSITORIES)
        self._parsed: LRUCache[str, tuple[str | None, tuple[str, ...]]] = LRUCache(MAX_REPOSITORIES)

    def served(self, upstream: str, repository: str, manifest: Manifest) -> None:
        """A client was given `manifest` under `repository` (no I/O: the fast path calls this)."""
        if not self.enabled or manifest.media_type in INDEX_TYPES:
            return
        key = (upstream, repository)
        recent = self._served.get(key)
        held = recent.get(manifest.digest) if recent is not None else None
        now = time.monotonic()
        if held is not None and now - held.at < WINDOW:
            return  # started or not, within its window: as it was (a warm tag's every request: no more work)
        parts = self._parts(manifest)
        if parts is None:
            return
        if recent is None:
            recent = self._served[key] = {}
        if len(recent) >= MAX_PER_REPOSITORY and manifest.digest not in recent:
            del recent[min(recent, key=lambda digest: recent[digest].at)]
        recent[manifest.digest] = Served(*parts, now)

    def claim(self, upstream: str, repository: str, digest: str) -> list[str]:
        """A client asks for the layer `digest`: the other blobs of a manifest just served that names
        it, in manifest order (config first), once per serving; [] when there is none to start."""
        recent = self._served.get((upstream, repository)) if self.enabled else None
        if not recent:
            return []
        now = time.monotonic()
        for served in recent.values():
            if served.started or now - served.at >= WINDOW or digest not in served.layers:
                continue
            served.started = True
            rest = [served.config] if served.config is not None else []
            return [blob for blob in [*rest, *served.layers] if blob != digest]
        return []

    def _parts(self, manifest: Manifest) -> tuple[str | None, tuple[str, ...]] | None:
        parts = self._parsed.get(manifest.digest)
        if parts is None:
            parts = _image_parts(manifest.body)
            if parts is None:
                return None
            self._parsed[manifest.digest] = parts
        return parts


def _image_parts(body: bytes) -> tuple[str | None, tuple[str, ...]] | None:
    """(config, layers) digests of an image manifest; None for anything else or too many."""
    try:
        manifest = json.loads(body)
        layers = manifest["layers"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(layers, list) or not 0 < len(layers) <= MAX_BLOBS:
        return None
    digests = tuple(d["digest"] for d in layers if isinstance(d, dict) and isinstance(d.get("digest"), str))
    config = manifest.get("config")
    config_digest = config.get("digest") if isinstance(config, dict) else None
    return (config_digest if isinstance(config_digest, str) else None), digests
