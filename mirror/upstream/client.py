"""One httpx client per upstream registry; the only module that sees httpx errors."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from mirror import __version__
from mirror.config import ProxyEnvironment, UpstreamConfig
from mirror.link import Link, LinkPolicy
from mirror.registry.errors import (
    BlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameUnknown,
    NotFound,
    RegistryError,
    TooManyRequests,
    Unauthorized,
    UpstreamFailed,
    UpstreamUnavailable,
)
from mirror.registry.mediatypes import MAX_MANIFEST, OCI_INDEX
from mirror.registry.reference import Digest, docker_hub_name
from mirror.registry.referrers import index_descriptors
from mirror.stats import Stats, UpstreamStats
from mirror.upstream.auth import RegistryAuth
from mirror.upstream.body import UpstreamBody
from mirror.upstream.egress import EgressTransport, ProxyRoute
from mirror.upstream.health import Health
from mirror.upstream.trust import explain, ssl_context, tls_failure

log = logging.getLogger(__name__)

# Transient upstream failures are retried this many times, after 0.25 s, then 0.5 s.
RETRIES = 2
RETRY_BACKOFF = 0.25
_RETRY_STATUSES = frozenset({500, 502, 503, 504})
_ERROR_BODY_LIMIT = 64 * 1024
MAX_LIST_PAGES = 1000  # of an upstream's tag list or referrers: a bound on an upstream that pages forever
_MANIFEST_PATH = re.compile(r"/v2/.+/manifests/[^/]+$")


@dataclass(frozen=True)
class ManifestHead:
    digest: str | None
    media_type: str
    size: int | None


@dataclass(frozen=True)
class FetchedManifest:
    body: bytes
    media_type: str
    digest: str | None


class Upstream:
    def __init__(self, config: UpstreamConfig, stats: Stats, proxy_env: ProxyEnvironment | None = None) -> None:
        self.name = config.name
        self.url = config.url
        self.counters: UpstreamStats = stats.upstream(config.name)
        self.host = httpx.URL(config.url).host
        self.health = Health()
        self.route = ProxyRoute.for_upstream(config.proxy, proxy_env or ProxyEnvironment())
        self.link = Link(
            LinkPolicy(
                config.max_connections, config.max_connections_per_blob, config.parallel_threshold, config.max_bandwidth
            )
        )
        # Blob connections are capped by the link (waiting in turn); the pool only needs room for them and the rest.
        limits = httpx.Limits(max_connections=max(64, config.max_connections + 16), max_keepalive_connections=32)
        context = ssl_context(config.ca_file, config.client_cert, config.client_key)
        self.client = httpx.AsyncClient(
            base_url=config.url,
            auth=RegistryAuth(self.host, config.username, config.password),
            follow_redirects=True,
            max_redirects=5,
            timeout=httpx.Timeout(config.read_timeout, connect=config.connect_timeout, pool=config.connect_timeout),
            transport=EgressTransport(self.route, context, limits),
            headers={"User-Agent": f"mirror/{__version__}", "Accept-Encoding": "identity"},
            event_hooks={"request": [self._count_request], "response": [self._read_quota]},
            trust_env=False,
        )

    async def _count_request(self, request: httpx.Request) -> None:
        self.counters.requests += 1

    async def _read_quota(self, response: httpx.Response) -> None:
        request = response.request
        if request.method == "GET" and response.status_code < 400 and _MANIFEST_PATH.match(request.url.path):
            self.counters.manifest_gets += 1  # what Docker Hub counts as a pull (HEADs and refusals are free)
        headers = response.headers
        self.counters.saw_ratelimit(
            headers.get("ratelimit-limit"), headers.get("ratelimit-remaining"), headers.get("docker-ratelimit-source")
        )

    def repository(self, name: str) -> str:
        return docker_hub_name(name) if self.name == "docker.io" else name

    def failure(self, exc: httpx.HTTPError, *, during: str = "request") -> RegistryError:
        """Translate an httpx error into ours, naming the upstream but never its credentials."""
        self.counters.errors += 1
        reason = type(exc).__name__
        tls = tls_failure(exc)
        if tls is not None:
            message, setting = explain(tls, self.name, _where(exc))
            self.health.failed(message, setting)
            return UpstreamUnavailable(message, detail={"upstream": self.name, "setting": setting})
        self.health.failed(f"{during}: {reason}: {exc}" if str(exc) else f"{during}: {reason}")
        if isinstance(exc, httpx.TooManyRedirects):
            return UpstreamUnavailable(
                f"upstream {self.name} redirected too many times", detail={"upstream": self.name}
            )
        if isinstance(exc, httpx.ProxyError):
            refused = self.proxy_refused(str(exc), _where(exc))
            self.health.failed(refused.message, "proxy")
            return refused
        if during == "download":
            return UpstreamFailed(
                f"upstream {self.name} broke off the download: {reason}", detail={"upstream": self.name}
            )
        return UpstreamUnavailable(
            f"upstream {self.name} ({self.url}) is unreachable: {reason}", detail={"upstream": self.name}
        )

    def proxy_refused(self, answer: str, where: str) -> UpstreamUnavailable:
        setting = f'[upstreams."{self.name}"] proxy' if self.route.explicit else "HTTPS_PROXY/HTTP_PROXY"
        hint = f"check the credentials in {setting}" if answer.startswith("407") else "the proxy could not reach it"
        return UpstreamUnavailable(
            f"upstream {self.name}: the egress proxy ({self.route.describe()}) answered {answer[:100]} "
            f"for {where}; {hint}",
            detail={"upstream": self.name, "setting": "proxy"},
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    @asynccontextmanager
    async def _send(
        self,
        method: str,
        path: str,
        headers: list[tuple[str, str]] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> AsyncIterator[httpx.Response]:
        response = await self._send_with_retries(method, path, headers, params)
        try:
            yield response
        finally:
            await response.aclose()

    async def _send_with_retries(
        self,
        method: str,
        path: str,
        headers: list[tuple[str, str]] | None,
        params: Mapping[str, str] | None,
    ) -> httpx.Response:
        """Send, retrying transient failures with backoff; no byte has reached a client yet."""
        if wait := self.health.cooling_down():
            health = self.health
            detail = {"upstream": self.name}
            if health.last_error_setting:
                detail["setting"] = health.last_error_setting
            raise UpstreamUnavailable(
                f"upstream {self.name} failed {health.consecutive_failures} times in a row; "
                f"not asking it again for {wait:.0f} s. Last error: {health.last_error_message}",
                detail=detail,
            )
        for attempt in range(RETRIES + 1):
            request = self.client.build_request(method, path, headers=headers, params=params)
            try:
                response = await self.client.send(request, stream=True)
            except httpx.HTTPError as exc:
                if attempt == RETRIES or not _transient(exc):
                    raise self.failure(exc) from exc
                log.info("upstream %s: %s on %s %s, retrying", self.name, type(exc).__name__, method, path)
            else:
                if response.status_code < 500 and response.status_code != 429:
                    self.health.succeeded()
                if response.status_code not in _RETRY_STATUSES or attempt == RETRIES:
                    return response
                await response.aclose()
                log.info("upstream %s answered %d to %s %s, retrying", self.name, response.status_code, method, path)
            self.counters.retries += 1
            await asyncio.sleep(RETRY_BACKOFF * 2**attempt)
        raise AssertionError("unreachable")

    async def _raise_for_status(self, response: httpx.Response, not_found: type[RegistryError]) -> None:
        status = response.status_code
        if status < 300:
            return
        body = b""
        if response.request.method != "HEAD":
            try:
                async for chunk in response.aiter_raw():
                    body += chunk
                    if len(body) > _ERROR_BODY_LIMIT:
                        break
            except httpx.HTTPError:
                pass
        code, message, detail = _parse_error_body(body)
        headers = {}
        if status == 429:
            self.health.failed("answered 429 (rate limited)")
            if "retry-after" in response.headers:
                headers["Retry-After"] = response.headers["retry-after"]
            raise TooManyRequests(message or f"upstream {self.name} is rate limiting", detail=detail, headers=headers)
        if status == 407:  # an http:// upstream forwarded by a proxy that wants credentials
            self.counters.errors += 1
            refused = self.proxy_refused("407 Proxy Authentication Required", response.request.url.host)
            self.health.failed(refused.message, "proxy")
            raise refused
        if status == 401:
            raise Unauthorized(message or f"upstream {self.name} refused our credentials", code=code or "UNAUTHORIZED")
        if status == 403:
            raise RegistryError(
                message or "access denied by upstream", code=code or "DENIED", status=403, detail=detail
            )
        if status == 404:
            error = not_found(message, detail=detail)
            if code in ("NAME_UNKNOWN", "MANIFEST_UNKNOWN", "BLOB_UNKNOWN"):
                error.code = code
            raise error
        if status == 400 and b"SSL certificate" in body:
            # nginx's answer to a client without a certificate, where ssl_verify_client is on
            self.health.failed("answered 400: a client certificate is required")
            raise UpstreamUnavailable(
                f"upstream {self.name} requires a TLS client certificate; set "
                f'[upstreams."{self.name}"] client_cert and client_key',
                detail={"upstream": self.name, "setting": "client_cert"},
            )
        if 400 <= status < 500:
            raise RegistryError(
                message or f"upstream {self.name} answered {status}",
                code=code or "UNKNOWN",
                status=status,
                detail=detail,
            )
        self.counters.errors += 1
        self.health.failed(f"answered {status}")
        raise UpstreamUnavailable(
            f"upstream {self.name} answered {status}", detail={"upstream": self.name, "status": status}
        )

    async def head_manifest(self, repository: str, reference: str, accept: list[str]) -> ManifestHead:
        path = f"/v2/{self.repository(repository)}/manifests/{reference}"
        async with self._send("HEAD", path, headers=[("Accept", a) for a in accept]) as response:
            await self._raise_for_status(response, ManifestUnknown)
            length = response.headers.get("content-length", "")
            return ManifestHead(
                digest=response.headers.get("docker-content-digest"),
                media_type=_media_type(response),
                size=int(length) if length.isdigit() else None,
            )

    async def get_manifest(self, repository: str, reference: str, accept: list[str]) -> FetchedManifest:
        path = f"/v2/{self.repository(repository)}/manifests/{reference}"
        async with self._send("GET", path, headers=[("Accept", a) for a in accept]) as response:
            await self._raise_for_status(response, ManifestUnknown)
            length = response.headers.get("content-length", "")
            if length.isdigit() and int(length) > MAX_MANIFEST:
                raise ManifestInvalid(f"upstream manifest is larger than {MAX_MANIFEST} bytes")
            body = bytearray()
            try:
                async for chunk in response.aiter_raw():
                    body += chunk
                    if len(body) > MAX_MANIFEST:
                        raise ManifestInvalid(f"upstream manifest is larger than {MAX_MANIFEST} bytes")
            except httpx.HTTPError as exc:
                raise self.failure(exc) from exc
            self.counters.bytes_fetched += len(body)
            return FetchedManifest(bytes(body), _media_type(response), response.headers.get("docker-content-digest"))

    @asynccontextmanager
    async def open_blob(
        self, repository: str, digest: Digest, start: int = 0, end: int | None = None
    ) -> AsyncIterator[UpstreamBody]:
        """Bytes [start, end) of the blob (end None: to its end), with Range unless that is all of it.

        The answer says whether the upstream honoured Range (`ranged`). Each call asks the
        registry again, so an expired CDN URL is never reused.
        """
        ranged = start > 0 or end is not None
        headers = [("Range", f"bytes={start}-{'' if end is None else end - 1}")] if ranged else None
        path = f"/v2/{self.repository(repository)}/blobs/{digest}"
        response = await self._send_with_retries("GET", path, headers, None)
        if response.status_code in (401, 403) and response.history:
            # A CDN refused the URL the registry redirected to (signed URLs expire; Docker Hub's
            # within minutes): ask the registry once more, for a fresh one.
            log.info(
                "upstream %s: redirect target answered %d for %s; asking again", self.name, response.status_code, digest
            )
            await response.aclose()
            self.counters.retries += 1
            response = await self._send_with_retries("GET", path, headers, None)
        try:
            await self._raise_for_status(response, BlobUnknown)
            yield UpstreamBody(
                response,
                start,
                upstream=self.name,
                counters=self.counters,
                failure=lambda exc: self.failure(exc, during="download"),
            )
        finally:
            await response.aclose()

    async def head_blob(self, repository: str, digest: Digest) -> int | None:
        async with self._send("HEAD", f"/v2/{self.repository(repository)}/blobs/{digest}") as response:
            await self._raise_for_status(response, BlobUnknown)
            length = response.headers.get("content-length", "")
            return int(length) if length.isdigit() else None

    async def referrers(self, repository: str, digest: Digest) -> list[dict[str, Any]] | None:
        """The descriptors the upstream's referrers API lists (following its pages); None if it has no such API.

        The spec forbids a 404 from a registry that has the API, so a 404 says it has not.
        """
        found: list[dict[str, Any]] = []
        path: str | None = f"/v2/{self.repository(repository)}/referrers/{digest}"
        for _ in range(MAX_LIST_PAGES):
            if path is None:
                break
            async with self._send("GET", path, headers=[("Accept", OCI_INDEX)]) as response:
                if response.status_code == 404 and not found:
                    return None
                await self._raise_for_status(response, NotFound)
                body = await self._read(response)
                link = response.headers.get("link")
            found += index_descriptors(body)
            path = next_link(link)
        return found

    async def _read(self, response: httpx.Response) -> bytes:
        try:
            return await response.aread()
        except httpx.HTTPError as exc:
            raise self.failure(exc) from exc

    async def all_tags(self, repository: str) -> list[str]:
        """Every tag of a repository, following the upstream's pages (`Link`) until one brings none new.

        The stop on no progress also ends a loop with an upstream that ignores `last`.
        """
        found: dict[str, None] = {}
        path: str | None = f"/v2/{self.repository(repository)}/tags/list"
        for _ in range(MAX_LIST_PAGES):
            if path is None:
                break
            async with self._send("GET", path) as response:
                await self._raise_for_status(response, NameUnknown)
                body = await self._read(response)
                link = response.headers.get("link")
            tags = _tags_of(body, self.name)
            new = [tag for tag in tags if tag not in found]
            found.update(dict.fromkeys(new))
            path = next_link(link) if new else None
        return list(found)


def _tags_of(body: bytes, upstream: str) -> list[str]:
    try:
        tags = json.loads(body).get("tags") or []  # distribution answers null for a repository without tags
    except (ValueError, AttributeError):
        raise UpstreamFailed(f"upstream {upstream} answered a tag list that is not JSON") from None
    if not isinstance(tags, list):
        raise UpstreamFailed(f"upstream {upstream} answered a tag list without a list of tags")
    return [tag for tag in tags if isinstance(tag, str)]


_NEXT_LINK = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')


def next_link(header: str | None) -> str | None:
    """The target of a `Link: <…>; rel="next"` header, as the upstream wrote it (a path, or a URL)."""
    match = _NEXT_LINK.search(header or "")
    return match[1] if match else None


def anonymous_quota_warning(config: UpstreamConfig) -> str | None:
    """What pulling Docker Hub without an account means for a site, when that is how it is set up."""
    if config.name != "docker.io" or config.username is not None:
        return None
    return (
        "docker.io has no credentials: Docker Hub counts anonymous pulls against a small hourly quota "
        "per source IP address, which every client behind this site's NAT shares, and answers 429 "
        "once it is spent. Each cache miss of a manifest counts as a pull (cache hits do not). "
        'Set [upstreams."docker.io"] username and password (an access token) for the account\'s larger quota; '
        "the dashboard and /metrics show the quota Docker Hub reports."
    )


def _transient(exc: httpx.HTTPError) -> bool:
    """Worth another try: a network failure, not a certificate or a proxy's refusal."""
    if not isinstance(exc, httpx.TransportError) or tls_failure(exc) is not None:
        return False
    return not (isinstance(exc, httpx.ProxyError) and str(exc).startswith("407"))


def _where(exc: httpx.HTTPError) -> str:
    """host:port of the request that failed, which may be a CDN's rather than the upstream's."""
    try:
        url = exc.request.url
    except RuntimeError:  # an error raised before any request was made
        return "the upstream"
    return f"{url.host}:{url.port or (443 if url.scheme == 'https' else 80)}"


def _media_type(response: httpx.Response) -> str:
    content_type: str = response.headers.get("content-type", "application/octet-stream")
    return content_type.split(";")[0].strip()


def _parse_error_body(body: bytes) -> tuple[str | None, str | None, object]:
    try:
        error = json.loads(body)["errors"][0]
        return str(error["code"]), str(error.get("message", "")) or None, error.get("detail")
    except (ValueError, KeyError, IndexError, TypeError):
        return None, None, None
