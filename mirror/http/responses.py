"""HTTP responses for registry content: byte ranges, blobs that may still be arriving, errors."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from mirror.cache.metadata import Manifest
from mirror.proxy.bodies import BlobBody
from mirror.registry.errors import DownloadFailed, RangeInvalid, RegistryError
from mirror.registry.reference import Digest

log = logging.getLogger(__name__)

API_VERSION_HEADER = ("Docker-Distribution-API-Version", "registry/2.0")


def json_body(value: object) -> bytes:
    """A JSON answer as distribution writes it: compact."""
    return json.dumps(value, separators=(",", ":")).encode()


def error_response(error: RegistryError) -> Response:
    headers = {API_VERSION_HEADER[0]: API_VERSION_HEADER[1], **error.headers}
    body = json.dumps(error.body()).encode()
    return Response(body, status_code=error.status, headers=headers, media_type="application/json")


def raw_error(error: RegistryError) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """An error's headers and body as bytes, for the layers below the framework (ASGI, the protocol)."""
    body = json.dumps(error.body()).encode()
    headers = {
        "content-type": "application/json",
        "content-length": str(len(body)),
        API_VERSION_HEADER[0].lower(): API_VERSION_HEADER[1],
        **{name.lower(): value for name, value in error.headers.items()},
    }
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()], body


# A manifest's Content-Type is the upstream's word: browsers must not guess a page out of it.
NOSNIFF = ("X-Content-Type-Options", "nosniff")


def manifest_headers(manifest: Manifest, cache_status: str) -> dict[str, str]:
    return {
        API_VERSION_HEADER[0]: API_VERSION_HEADER[1],
        "Content-Type": manifest.media_type,
        "Docker-Content-Digest": manifest.digest,
        "Content-Length": str(len(manifest.body)),
        "ETag": f'"{manifest.digest}"',
        "X-Cache": cache_status,
        NOSNIFF[0]: NOSNIFF[1],
    }


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """One byte range as [start, end); None when the whole body should be sent.

    Malformed and multi-part ranges are ignored, as RFC 9110 allows; an unsatisfiable one
    raises RangeInvalid (416).
    """
    if header is None:
        return None
    unit, _, spec = header.partition("=")
    first, dash, last = spec.strip().partition("-")
    if unit.strip().lower() != "bytes" or not dash or "," in spec:
        return None
    first, last = first.strip(), last.strip()
    if not (first + last).isascii():  # "²".isdigit() is True, and int("²") raises
        return None
    if not (first.isdigit() or first == "") or not (last.isdigit() or last == "") or first == last == "":
        return None
    if first == "":
        length = int(last)
        start, end = max(size - length, 0), size
        if length == 0:
            start = end = size
    else:
        start = int(first)
        end = min(int(last) + 1, size) if last else size
        if last and int(last) < start:
            return None
    if start >= end:
        raise RangeInvalid(detail={"range": header[:100], "size": size}, headers={"Content-Range": f"bytes */{size}"})
    return start, end


def blob_headers(digest: str, size: int | None) -> dict[str, str]:
    headers = {
        "Content-Type": "application/octet-stream",
        "Docker-Content-Digest": digest,
        "Accept-Ranges": "bytes",
        "ETag": f'"{digest}"',
        "Cache-Control": "max-age=31536000",
    }
    if size is not None:
        headers["Content-Length"] = str(size)
    return headers


class BlobResponse(StreamingResponse):
    """Streams blob bytes; when the download behind them fails, the connection is cut."""

    def __init__(
        self,
        body: AsyncIterator[bytes | memoryview],
        status_code: int,
        headers: dict[str, str],
        digest: str,
        cleanup: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__(body, status_code=status_code, headers=headers)
        self.digest = digest
        self.cleanup = cleanup

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self.cleanup is not None:
                await self.cleanup()

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        try:
            async for chunk in self.body_iterator:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except DownloadFailed as exc:
            # Leaving the response incomplete makes the server close the connection, so the
            # client sees a truncated body rather than a short blob that looks whole.
            log.warning("cutting off the response for %s: %s", self.digest, exc.message)
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def serve_blob(request: Request, body: BlobBody, digest: Digest) -> Response:
    """A blob's response, whole or the Range asked for, from whatever body the proxy gave."""
    try:
        range_header = request.headers.get("range") if body.ranged else None
        # Without a Range the bytes can start before the size is known (chunked); with one, wait for it.
        total = await body.size(wait=range_header is not None)
        headers = {API_VERSION_HEADER[0]: API_VERSION_HEADER[1], **blob_headers(str(digest), total)}
        headers["X-Cache"] = body.cache_status
        start, end, status = 0, total, 200
        byte_range = parse_range(range_header, total) if total is not None else None
    except BaseException:
        await body.aclose()  # a 416, or a download that failed before its size was known
        raise
    if byte_range is not None:
        (start, end), status = byte_range, 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{total}"
        headers["Content-Length"] = str(end - start)
        headers["X-Cache"] = body.cache_status_for(start, end)
    return BlobResponse(body.iter_range(start, end), status, headers, str(digest), cleanup=body.aclose)
