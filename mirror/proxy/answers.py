"""What the proxy answers, and what each answer cost: its cache status (the `X-Cache` header),
counted in one place."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from mirror.cache.metadata import Manifest
from mirror.stats import Stats


class CacheStatus(StrEnum):
    HIT = "HIT"  # from the cache
    MISS = "MISS"  # fetched from the upstream by this request
    REVALIDATED = "REVALIDATED"  # a tag's cached answer, confirmed by the upstream (a HEAD)
    STALE = "STALE"  # the cached answer: the upstream failed, or said it is stale too
    COALESCED = "COALESCED"  # a blob download another request started, joined
    BYPASS = "BYPASS"  # a blob the cache has no room for, streamed through
    PASS = "PASS"  # a range sent on as the upstream sent it, before the blob is verified


@dataclass(frozen=True)
class ManifestAnswer:
    manifest: Manifest
    cache_status: CacheStatus  # HIT, MISS, REVALIDATED or STALE
    age: float | None = None  # a STALE answer: seconds since the upstream last confirmed it
    upstream_headers: tuple[tuple[str, str], ...] = ()  # the upstream's quota headers, passed on


def answered(
    stats: Stats,
    manifest: Manifest,
    status: CacheStatus,
    age: float | None = None,
    upstream_headers: tuple[tuple[str, str], ...] = (),
    *,
    fetched: bool = False,
) -> ManifestAnswer:
    """A manifest answer, counted: the only way the proxy makes one. `fetched`: the upstream
    sent it just now, stale (a mirror upstream could not revalidate it): counted as a miss."""
    count_manifest(stats, CacheStatus.MISS if fetched else status)
    return ManifestAnswer(manifest, status, age, upstream_headers)


def count_manifest(stats: Stats, status: CacheStatus) -> None:
    """One manifest answered (the fast path's warm answers too)."""
    if status is CacheStatus.MISS:
        stats.manifest_misses += 1
    elif status is CacheStatus.STALE:
        stats.manifest_stale += 1
    else:  # HIT, REVALIDATED: no bytes of it came from the upstream
        stats.manifest_hits += 1


def count_blob(stats: Stats, status: CacheStatus) -> None:
    """One blob request answered: from the cache, by a new download, or by joining one."""
    if status is CacheStatus.MISS:
        stats.blob_misses += 1
    elif status is CacheStatus.COALESCED:
        stats.coalesced += 1
    else:
        stats.blob_hits += 1


@dataclass
class Freshness:
    """How long a tag's answer, a tag list or referrers are served without asking the upstream;
    one object shared by the parts of the proxy, so a reload changes it for all at once."""

    tag_ttl: float

    def fresh(self, fetched_at: float, now: float) -> bool:
        return now - fetched_at < self.tag_ttl
