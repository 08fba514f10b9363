"""Answers for the commonest request of all: GET or HEAD of a manifest fresh in memory.

Our own work for a warm tag is a few dictionary lookups; uvicorn's ASGI machinery around
it (a scope, a task, a request-response cycle, a dozen awaits) cost four times as much.
So the HTTP protocol (`mirror.http.server`) asks `WarmAnswers` first, with the parsed request
head, and writes the whole response itself when the answer is in memory. The middleware
`WarmManifests` does the same inside the app, for requests the protocol passes on
(pipelined, HTTP/1.0, behind client auth, another ASGI server). Anything else (a miss,
a query string, a body, bad input) goes on to the app, which answers the same, more slowly.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

from starlette.types import ASGIApp, Receive, Scope, Send

from mirror import requestid
from mirror.cache.metadata import Manifest
from mirror.composition import Mirror
from mirror.http import accesslog
from mirror.http.access import AccessSettings
from mirror.http.responses import manifest_headers
from mirror.http.target import Target, read_target, target_of
from mirror.proxy.answers import CacheStatus, count_manifest
from mirror.registry.errors import RegistryError
from mirror.registry.mediatypes import accepted_types
from mirror.registry.reference import Digest, parse_reference

# Real clients send one Accept header of a few hundred characters.
_MAX_ACCEPT_HEADERS = 8
_MAX_ACCEPT_CHARS = 1024


@dataclass(frozen=True, slots=True)
class WarmQuestion:
    """A manifest request, parsed and validated: what a warm answer depends on."""

    method: str
    target: Target
    reference: str | Digest
    accepted: frozenset[str]
    request_id: str | None = None  # the client's X-Request-Id, when it sent a sane one


def warm_question(method: str, target: Target | RegistryError | None, accept: list[str]) -> WarmQuestion | None:
    """The question a GET or HEAD of a manifest asks, or None for any other request or bad input."""
    if not isinstance(target, Target) or target.api.kind != "manifests" or target.api.ns is not None:
        return None
    upstream, repository = target.upstream, target.repository
    try:
        reference = parse_reference(target.api.reference)
    except RegistryError:
        return None
    if not upstream.policy.allows(repository):
        return None  # the app refuses it, naming the rule
    return WarmQuestion(method, target, reference, accepted_types(accept))


def warm_manifest(mirror: Mirror, question: WarmQuestion) -> Manifest | None:
    """The manifest when it is fresh in memory, counted as a hit; else None.

    No I/O and no await: safe to call from a protocol callback.
    """
    upstream, repository = question.target.upstream, question.target.repository
    manifest = mirror.proxy.fresh_manifest(upstream, repository, question.reference, question.accepted)
    if manifest is None:
        return None
    mirror.stats.requests += 1
    count_manifest(mirror.stats, CacheStatus.HIT)
    if question.method == "GET":
        mirror.stats.bytes_served_from_cache += len(manifest.body)
    mirror.traffic.count(upstream.name, repository)
    return manifest


class WarmManifests:
    """ASGI middleware: a warm manifest without routing or Request/Response objects."""

    def __init__(self, app: ASGIApp, mirror: Mirror) -> None:
        self.app = app
        self.mirror = mirror

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD") and not scope["query_string"]:
            mirror = self.mirror
            accept = [value.decode("latin-1") for key, value in scope["headers"] if key == b"accept"]
            question = warm_question(scope["method"], target_of(scope), accept)
            manifest = warm_manifest(mirror, question) if question is not None else None
            if question is not None and manifest is not None:
                scope.setdefault("state", {})["upstream"] = question.target.upstream.name
                headers = [
                    (k.lower().encode(), v.encode()) for k, v in manifest_headers(manifest, CacheStatus.HIT).items()
                ]
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": manifest.body if scope["method"] == "GET" else b""})
                return
        await self.app(scope, receive, send)


class WarmAnswers:
    """For the HTTP protocol: a warm manifest's response headers and body, from a request head."""

    # A request with a body, an upgrade or a proxy's client address takes the app's road.
    _PASS_ON = frozenset((b"content-length", b"transfer-encoding", b"expect", b"upgrade", b"x-forwarded-for"))

    _MAX_HEADS = 4096

    def __init__(self, mirror: Mirror, access: AccessSettings, *, json_log: bool) -> None:
        self._mirror = mirror
        self._access = access  # the server's one: a reload replaces what it holds
        self._json_log = json_log
        self._log_access = accesslog.log.isEnabledFor(logging.INFO)  # the level is set before the server starts
        self._heads: dict[tuple[str, str], bytes] = {}  # (digest, media type) -> header lines

    def forget(self) -> None:
        """After a reload: the header lines made under the old config go (the protocol forgets its questions)."""
        self._heads = {}

    def question(self, method: bytes, url: bytes, headers: list[tuple[bytes, bytes]]) -> WarmQuestion | None:
        """What the request asks, if a warm answer might do; None passes it on to the app.

        Depends only on the request's bytes and the config, so the protocol may remember it.
        """
        mirror = self._mirror
        access = self._access
        # Off when clients log in (the app checks that); else reading as anonymous, under the rules.
        if access.clients is not None or method not in (b"GET", b"HEAD") or not url.startswith(b"/v2/"):
            return None
        if b"?" in url or b"%" in url or b"#" in url or not url.isascii():
            return None
        accept = []
        request_id = None
        for name, value in headers:
            if name == b"accept":
                accept.append(value.decode("latin-1"))
            elif name == b"x-request-id":
                request_id = requestid.accept(value.decode("latin-1"))
            elif name in self._PASS_ON:
                return None
        if len(accept) > _MAX_ACCEPT_HEADERS or sum(map(len, accept)) > _MAX_ACCEPT_CHARS:
            return None  # questions are remembered: an odd Accept takes the app's road instead
        try:
            target = read_target(mirror, url.decode(), b"")  # no query here: the same reading as the app's
        except RegistryError:
            return None
        question = warm_question(method.decode(), target, accept)
        if question is not None and request_id is not None:
            question = replace(question, request_id=request_id)
        rules = access.rules
        if question is not None and rules is not None:
            return question if rules.allows(None, question.target.read) else None  # else the app refuses it
        return question

    def answer(self, question: WarmQuestion, client: tuple[str, int] | None) -> tuple[bytes, bytes] | None:
        """(header lines, body) of a 200 when the answer is fresh in memory, else None."""
        started = time.perf_counter()
        mirror = self._mirror
        manifest = warm_manifest(mirror, question)
        if manifest is None:
            return None
        mirror.stats.protocol_answers += 1
        request_id = question.request_id or requestid.make()
        head = self._head(manifest) + b"x-request-id: " + request_id.encode() + b"\r\n"
        body = manifest.body if question.method == "GET" else b""
        took = time.perf_counter() - started
        mirror.stats.latencies.observe("manifest", CacheStatus.HIT, took, took)
        if self._log_access:
            address = client[0] if client else "-"
            upstream = question.target.upstream.name
            accesslog.write_line(
                self._json_log,
                address,
                question.method,
                f"/v2/{question.target.api.name}/manifests/{question.target.api.reference}",
                200,
                len(body),
                took * 1000,
                CacheStatus.HIT,
                upstream,
                request_id,
            )
        return head, body

    def _head(self, manifest: Manifest) -> bytes:
        key = (manifest.digest, manifest.media_type)
        head = self._heads.get(key)
        if head is None:
            if len(self._heads) >= self._MAX_HEADS:
                self._heads.clear()
            headers = manifest_headers(manifest, CacheStatus.HIT).items()
            head = self._heads[key] = "".join(f"{k.lower()}: {v}\r\n" for k, v in headers).encode()
        return head
