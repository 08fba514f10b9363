"""A small fake registry for what a real one cannot do: wrong bytes, cut connections, stalls."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from support import free_port

OCI_INDEX = "application/vnd.oci.image.index.v1+json"


@dataclass
class FakeBlob:
    """`block` repeated `repeat` times, served in `chunk`-sized pieces, with optional faults."""

    block: bytes
    repeat: int = 1
    chunk: int = 64 * 1024
    wrong_bytes: bool = False  # serve the right length of the wrong content
    cut_at: int | None = None  # close the connection once the blob's byte at this offset is reached
    cut_times: int | None = None  # cut only this many answers that reach cut_at (None: every one)
    ranges: bool = True  # honour `Range: bytes=N-` with a 206, as registries and CDNs do
    length: bool = True  # send Content-Length; False: chunked, as some correct servers answer
    gate_at: int | None = None  # pause after this many bytes until `gate` is set
    gate: threading.Event = field(default_factory=threading.Event)
    delay: float = 0.0  # seconds between chunks: a slow drip

    @property
    def size(self) -> int:
        return len(self.block) * self.repeat

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        for _ in range(self.repeat):
            h.update(self.block)
        return "sha256:" + h.hexdigest()

    async def body(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Bytes [start, end) of the blob, with the faults it is set up for."""
        sent = start
        async for piece in self._body(start):
            if end is not None and sent + len(piece) >= end:
                yield piece[: end - sent]
                return
            sent += len(piece)
            yield piece

    async def _body(self, start: int) -> AsyncIterator[bytes]:
        data = self.block
        if self.wrong_bytes:
            data = bytes(b ^ 0xFF for b in data[:1]) + data[1:]
        position = 0  # of the blob
        for _ in range(self.repeat):
            for offset in range(0, len(data), self.chunk):
                piece = data[offset : offset + self.chunk]
                if position + len(piece) <= start:
                    position += len(piece)
                    continue
                piece = piece[max(0, start - position) :]
                first = max(position, start)
                if self.gate_at is not None and first >= self.gate_at:
                    await asyncio.to_thread(self.gate.wait)
                if self.cut_at is not None and self.cut_times != 0 and first + len(piece) > self.cut_at:
                    # Counted when it happens: a range that ends before cut_at is not cut.
                    if self.cut_times is not None:
                        self.cut_times -= 1
                    yield piece[: max(0, self.cut_at - first)]
                    raise ConnectionAbortedError("fake upstream cuts the connection")
                position = first + len(piece)
                if self.delay:
                    await asyncio.sleep(self.delay)
                yield piece


class FakeUpstream:
    def __init__(self) -> None:
        self.blobs: dict[str, FakeBlob] = {}
        self.manifests: dict[str, tuple[bytes, str]] = {}
        self.requests: Counter[tuple[str, str]] = Counter()
        self.ranges: list[tuple[str, str | None]] = []  # (digest, Range header) of every blob GET
        # Faults for every manifest request: (status, headers), e.g. (429, {"Retry-After": "30"}).
        self.manifest_error: tuple[int, dict[str, str]] | None = None
        # When set, requests need this Basic credential, as a Basic-auth registry would.
        self.basic_auth: tuple[str, str] | None = None
        self.authorizations: list[str | None] = []
        # The next this-many blob requests get `failure_status`, as an overloaded registry answers.
        self.blob_failures = 0
        self.failure_status = 503
        # Blob requests redirect back to themselves, forever.
        self.redirect_loop = False
        # Manifest requests redirect here (another server's URL), as a hostile upstream may.
        self.manifest_redirect: str | None = None
        # Seconds to wait before answering a blob request at all.
        self.header_delay = 0.0
        # Blob GETs redirect to a signed CDN URL that works once, as short-lived signed URLs expire.
        self.cdn_redirects = False
        self.cdn_requests: list[tuple[str, int]] = []  # (token, status) of every CDN request
        self.cdn_expired = 0  # this many more CDN requests find their signed URL expired (403)
        self._cdn_tokens: dict[str, str] = {}  # live token -> digest
        # The referrers API (distribution 2.8 has none): digest -> descriptors; None: no such API (404).
        self.referrers: dict[str, list[dict[str, object]]] | None = None
        self.referrers_status = 200  # another status: the API fails
        # Tag lists: pages (each a list of tags) served in turn with `Link` to the next; the last
        # page's Link is `tags_last_link` when set (another server's, say).
        self.tag_pages: list[list[str]] = []
        self.tags_last_link: str | None = None
        self.port = free_port()
        routes = [
            Route("/v2/", lambda r: JSONResponse({})),
            Route("/v2/{name:path}/blobs/{digest}", self._blob, methods=["GET", "HEAD"]),
            Route("/v2/{name:path}/manifests/{reference}", self._manifest, methods=["GET", "HEAD"]),
            Route("/v2/{name:path}/referrers/{digest}", self._referrers),
            Route("/v2/{name:path}/tags/list", self._tags),
            Route("/cdn/{token}", self._cdn),
        ]
        config = uvicorn.Config(Starlette(routes=routes), host="127.0.0.1", port=self.port, log_level="critical")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add_blob(self, blob: FakeBlob) -> str:
        digest = blob.digest
        self.blobs[digest] = blob
        return digest

    def start(self) -> FakeUpstream:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake upstream did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        for blob in self.blobs.values():
            blob.gate.set()
        self.server.should_exit = True
        self.thread.join(10)

    def gets(self, digest: str) -> int:
        return self.requests[("GET", digest)]

    def _unauthorized(self, request: Request) -> Response | None:
        self.authorizations.append(request.headers.get("authorization"))
        if self.basic_auth is None:
            return None
        expected = "Basic " + base64.b64encode(":".join(self.basic_auth).encode()).decode()
        if request.headers.get("authorization") == expected:
            return None
        body = {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}
        return JSONResponse(body, status_code=401, headers={"WWW-Authenticate": 'Basic realm="fake"'})

    async def _blob(self, request: Request) -> Response:
        digest = request.path_params["digest"]
        self.requests[(request.method, digest)] += 1
        if denied := self._unauthorized(request):
            return denied
        if self.redirect_loop:
            return Response(status_code=307, headers={"Location": str(request.url)})
        if self.header_delay:
            await asyncio.sleep(self.header_delay)
        if self.blob_failures > 0:
            self.blob_failures -= 1
            body = {"errors": [{"code": "UNAVAILABLE", "message": "busy"}]}
            return JSONResponse(body, status_code=self.failure_status)
        blob = self.blobs.get(digest)
        if blob is None:
            return JSONResponse({"errors": [{"code": "BLOB_UNKNOWN", "message": "blob unknown"}]}, status_code=404)
        headers = {"Content-Length": str(blob.size), "Docker-Content-Digest": digest}
        if not blob.length:
            del headers["Content-Length"]
        if request.method == "HEAD":
            return Response(b"", headers=headers, media_type="application/octet-stream")
        if self.cdn_redirects:
            token = base64.urlsafe_b64encode(os.urandom(9)).decode()
            self._cdn_tokens[token] = digest
            return Response(status_code=307, headers={"Location": f"{self.url}/cdn/{token}"})
        return self._send_blob(request, digest, blob, headers)

    async def _cdn(self, request: Request) -> Response:
        """A signed URL: good for one request, then 403 as an expired one would be."""
        token = request.path_params["token"]
        digest = self._cdn_tokens.pop(token, None)
        if self.cdn_expired > 0:
            self.cdn_expired -= 1
            digest = None
        self.cdn_requests.append((token, 403 if digest is None else 200))
        if digest is None:
            return Response(b"<Error><Code>AccessDenied</Code></Error>", status_code=403)
        blob = self.blobs[digest]
        return self._send_blob(request, digest, blob, {"Content-Length": str(blob.size)})

    def _send_blob(self, request: Request, digest: str, blob: FakeBlob, headers: dict[str, str]) -> Response:
        wanted = request.headers.get("range")
        self.ranges.append((digest, wanted))
        if wanted and blob.ranges and (match := re.fullmatch(r"bytes=(\d+)-(\d*)", wanted)):
            start, end = int(match[1]), min(int(match[2] or blob.size - 1) + 1, blob.size)
            if start >= blob.size:
                return Response(status_code=416, headers={"Content-Range": f"bytes */{blob.size}"})
            headers["Content-Length"] = str(end - start)
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{blob.size}"
            return StreamingResponse(blob.body(start, end), 206, headers, media_type="application/octet-stream")
        if not blob.length:
            headers.pop("Content-Length", None)
        return StreamingResponse(blob.body(), headers=headers, media_type="application/octet-stream")

    async def _tags(self, request: Request) -> Response:
        self.requests[("TAGS", request.path_params["name"])] += 1
        if denied := self._unauthorized(request):
            return denied
        page = int(request.query_params.get("page", "0"))
        tags = self.tag_pages[page] if page < len(self.tag_pages) else []
        headers = {}
        if page + 1 < len(self.tag_pages):
            headers["Link"] = f'<{request.url.path}?page={page + 1}>; rel="next"'
        elif self.tags_last_link is not None:
            headers["Link"] = f'<{self.tags_last_link}>; rel="next"'
        return JSONResponse({"name": request.path_params["name"], "tags": tags}, headers=headers)

    async def _referrers(self, request: Request) -> Response:
        digest = request.path_params["digest"]
        self.requests[("REFERRERS", digest)] += 1
        if self.referrers is None:
            return Response(b"404 page not found", status_code=404)
        if self.referrers_status != 200:
            return JSONResponse({"errors": [{"code": "UNAVAILABLE", "message": "fault"}]}, self.referrers_status)
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self.referrers.get(digest, [])}
        return JSONResponse(index, media_type=OCI_INDEX)

    async def _manifest(self, request: Request) -> Response:
        reference = request.path_params["reference"]
        self.requests[(request.method, reference)] += 1
        if denied := self._unauthorized(request):
            return denied
        if self.manifest_redirect is not None:
            return Response(status_code=307, headers={"Location": self.manifest_redirect})
        if self.manifest_error is not None:
            status, headers = self.manifest_error
            body = {"errors": [{"code": "TOOMANYREQUESTS" if status == 429 else "UNKNOWN", "message": "fault"}]}
            return JSONResponse(body, status_code=status, headers=headers)
        if reference not in self.manifests:
            return JSONResponse({"errors": [{"code": "MANIFEST_UNKNOWN", "message": "unknown"}]}, status_code=404)
        body, media_type = self.manifests[reference]
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        headers = {"Docker-Content-Digest": digest}
        return Response(body if request.method == "GET" else b"", headers=headers, media_type=media_type)
