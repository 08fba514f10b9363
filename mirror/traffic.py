"""Traffic over time: counters sampled every few seconds into a ring buffer (the last hour),
and request counts per repository, so the dashboard needs no external metrics store."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from dataclasses import dataclass, field

from mirror.stats import Stats

SAMPLE_INTERVAL = 5.0
SAMPLES = 720  # one hour at SAMPLE_INTERVAL
TOP_REPOSITORIES = 10
MAX_REPOSITORIES = 1000  # distinct repositories counted; the least requested are dropped beyond


def hits_and_misses(stats: Stats) -> tuple[int, int]:
    """Requests answered without an upstream fetch of their own, and those that needed one."""
    hits = stats.manifest_hits + stats.manifest_stale + stats.blob_hits + stats.coalesced
    return hits, stats.manifest_misses + stats.blob_misses


@dataclass
class _Totals:
    at: float
    requests: int
    hits: int
    misses: int
    bytes_from_cache: int
    bytes_from_upstream: int

    @classmethod
    def read(cls, stats: Stats) -> _Totals:
        hits, misses = hits_and_misses(stats)
        return cls(
            time.time(),
            stats.requests,
            hits,
            misses,
            stats.bytes_served_from_cache,
            stats.bytes_fetched_from_upstream,
        )

    def since(self, earlier: _Totals) -> dict[str, float | int]:
        return {
            "t": round(self.at, 3),
            "seconds": round(self.at - earlier.at, 3),
            "requests": self.requests - earlier.requests,
            "hits": self.hits - earlier.hits,
            "misses": self.misses - earlier.misses,
            "bytes_from_cache": self.bytes_from_cache - earlier.bytes_from_cache,
            "bytes_from_upstream": self.bytes_from_upstream - earlier.bytes_from_upstream,
        }


@dataclass
class Traffic:
    """Requests over time and per repository: the time series and top list the dashboard shows."""

    samples: deque[dict[str, float | int]] = field(default_factory=lambda: deque(maxlen=SAMPLES))
    repositories: Counter[tuple[str, str]] = field(default_factory=Counter)
    _last: _Totals | None = None

    def count(self, upstream: str, repository: str) -> None:
        key = (upstream, repository)
        if key not in self.repositories and len(self.repositories) >= MAX_REPOSITORIES:
            self.repositories = Counter(dict(self.repositories.most_common(MAX_REPOSITORIES // 2)))
        self.repositories[key] += 1

    def sample(self, stats: Stats) -> None:
        now = _Totals.read(stats)
        if self._last is not None:
            self.samples.append(now.since(self._last))
        self._last = now

    async def sample_forever(self, stats: Stats, interval: float = SAMPLE_INTERVAL) -> None:
        self.sample(stats)
        while True:
            await asyncio.sleep(interval)
            self.sample(stats)

    def series(self, stats: Stats) -> list[dict[str, float | int]]:
        """The stored samples, then the interval under way (so the charts move between samples)."""
        series = list(self.samples)
        if self._last is not None:
            series.append(_Totals.read(stats).since(self._last))
        return series

    def top(self, n: int = TOP_REPOSITORIES) -> list[dict[str, object]]:
        return [
            {"upstream": upstream, "repository": repository, "requests": count}
            for (upstream, repository), count in self.repositories.most_common(n)
        ]
