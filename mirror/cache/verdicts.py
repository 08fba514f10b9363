"""The signature policy's last verdict on each manifest, kept for the views (`mirror ls`, the dashboard).

Only shown, never obeyed: enforcement decides in memory, anew after a restart or a reload.
A verdict row is read defensively: anything odd reads as no verdict.
"""

from __future__ import annotations

import json
from typing import Any

import anyio.to_thread

from mirror.cache.index import MetadataIndex
from mirror.cache.layout import verdict_key

MAX_TEXT = 2000


class VerdictRecords:
    def __init__(self, index: MetadataIndex) -> None:
        self._index = index

    async def record(self, upstream: str, repository: str, digest: str, row: dict[str, Any]) -> None:
        text = json.dumps({key: _bounded(value) for key, value in row.items()})
        await anyio.to_thread.run_sync(self._index.set_raw, verdict_key(upstream, repository, digest), text)


def recorded(index: MetadataIndex, upstream: str, repository: str, digest: str) -> dict[str, Any] | None:
    """The last verdict on a manifest under a repository, or None."""
    raw = index.raw(verdict_key(upstream, repository, digest))
    try:
        row = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        return None
    if not isinstance(row, dict) or not isinstance(row.get("accepted"), bool) or not isinstance(row.get("reason"), str):
        return None
    return row


def summary(row: dict[str, Any] | None) -> str:
    """A verdict in a few words: `verified (by what)`, `refused`, `audit: refused`, or `-`."""
    if row is None:
        return "-"
    if row["accepted"]:
        return f"verified ({str(row.get('by', ''))[:80]})" if row.get("signed") is True else "accepted"
    return "audit: refused" if row.get("mode") == "audit" else "refused"


def _bounded(value: Any) -> Any:
    return value[:MAX_TEXT] if isinstance(value, str) else value
