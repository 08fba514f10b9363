"""The tag journal: every digest each tag pointed to, and when the mirror first and last saw it there.

Recorded whenever the upstream names a tag's digest (a fetch or a revalidation), read by
`mirror history` and `/api/history`. One sighting per digest: a tag that moves back to an
older digest extends that one's `last_seen`. (Whether a tag moved is the proxy's question: a
tag may answer one digest per Accept class, an index to one client and a manifest to another.)
"""

from __future__ import annotations

import time
from typing import Any

import anyio.to_thread

from mirror.cache.directory import CacheDirectory
from mirror.cache.index import MetadataIndex
from mirror.cache.layout import Sighting


class TagJournal:
    def __init__(self, index: MetadataIndex) -> None:
        self._index = index

    async def saw(self, upstream: str, repository: str, tag: str, digest: str) -> bool:
        """The upstream says the tag points to `digest` now; True if it never did before (as far as kept)."""
        return await anyio.to_thread.run_sync(record, self._index, upstream, repository, tag, digest, time.time())

    async def seen(self, upstream: str, repository: str, tag: str, digest: str) -> bool:
        """Whether the journal holds that the tag pointed to `digest` at some time."""
        sightings = await anyio.to_thread.run_sync(self._index.journal, upstream, repository, tag)
        return any(s.digest == digest for s in sightings)

    async def history(self, upstream: str, repository: str, tag: str) -> list[Sighting]:
        """The tag's digests, oldest first."""
        return await anyio.to_thread.run_sync(self._index.journal, upstream, repository, tag)


def record(index: MetadataIndex, upstream: str, repository: str, tag: str, digest: str, at: float) -> bool:
    """The tag points to `digest` at `at` (from the upstream, or from `mirror import`); True if new."""
    new: list[bool] = []

    def change(sightings: list[Sighting]) -> list[Sighting]:
        others = [s for s in sightings if s.digest != digest]
        old = next((s for s in sightings if s.digest == digest), None)
        new[:] = [old is None]
        seen = Sighting(digest, old.first_seen if old else at, max(at, old.last_seen) if old else at)
        # The oldest go first when the journal is full, so the order is by first sight.
        return sorted([*others, seen], key=lambda s: s.first_seen)

    index.update_journal(upstream, repository, tag, change)
    return new == [True]


def history_rows(directory: CacheDirectory, upstream: str, repository: str, tag: str | None) -> list[dict[str, Any]]:
    """`mirror history` and `/api/history`: one row per tag and digest, each tag's oldest first."""
    index = directory.metadata
    if tag is not None:
        found = [(tag, index.journal(upstream, repository, tag))]
    else:
        found = sorted((t, s) for u, r, t, s in index.journals() if (u, r) == (upstream, repository))
    return [
        {
            "upstream": upstream,
            "repository": repository,
            "tag": name,
            "digest": sighting.digest,
            "first_seen": _when(sighting.first_seen),
            "last_seen": _when(sighting.last_seen),
        }
        for name, sightings in found
        for sighting in sightings
    ]


def format_history(rows: list[dict[str, Any]]) -> str:
    """The rows as a table; how many times each tag moved, at the end of its rows."""
    if not rows:
        return "no history: the mirror has not seen that tag (or repository)\n"
    header = ("TAG", "DIGEST", "FIRST SEEN (UTC)", "LAST SEEN (UTC)")
    table = [header] + [(r["tag"], r["digest"], r["first_seen"], r["last_seen"]) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    lines = ["  ".join([*(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True)), row[3]]) for row in table]
    moves = {tag: sum(1 for r in rows if r["tag"] == tag) - 1 for tag in dict.fromkeys(r["tag"] for r in rows)}
    lines += [f"{tag}: {count} digest change{'s' if count != 1 else ''} seen" for tag, count in moves.items()]
    return "\n".join(lines) + "\n"


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
