"""A blob's bytes as an upstream answer streams them: where they start, the blob's size, the raw bytes."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable

import httpx

from mirror.registry.errors import RegistryError, UpstreamFailed
from mirror.stats import UpstreamStats

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


class UpstreamBody:
    """A blob response being streamed: where its bytes start, the blob's size, and the raw bytes."""

    def __init__(
        self,
        response: httpx.Response,
        start: int,
        *,
        upstream: str,
        counters: UpstreamStats,
        failure: Callable[[httpx.HTTPError], RegistryError],
    ) -> None:
        self._failure = failure
        self._counters = counters
        self._response = response
        length = response.headers.get("content-length", "")
        self.size: int | None = int(length) if length.isascii() and length.isdigit() else None
        self.offset = 0  # the blob's byte this body starts at
        self.ranged = response.status_code == 206  # False: the upstream ignored Range, this is the whole blob
        if self.ranged:
            # The answer must start where asked, and say the whole blob's size.
            match = _CONTENT_RANGE.fullmatch(response.headers.get("content-range", ""))
            if match is None or int(match[1]) != start:
                raise UpstreamFailed(
                    f"upstream {upstream} answered a range from byte {start} with "
                    f"{response.headers.get('content-range', 'no Content-Range')!r}",
                    detail={"upstream": upstream},
                )
            self.offset, self.size = start, int(match[3])

    async def chunks(self) -> AsyncIterator[bytes]:
        # Raw bytes: a decoded body would not match the digest.
        try:
            async for chunk in self._response.aiter_raw():
                self._counters.bytes_fetched += len(chunk)
                yield chunk
        except httpx.HTTPError as exc:
            raise self._failure(exc) from exc
