"""How the mirror talks to one upstream: its endpoints in turn, retries, cool-downs, and its errors made ours.

The only place httpx errors are seen and translated (with the upstream's API in client.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx

from mirror.config import ProxyEnvironment, UpstreamConfig
from mirror.registry.errors import (
    BlobUnknown,
    ManifestUnknown,
    Offline,
    RegistryError,
    TooManyRequests,
    Unauthorized,
    UpstreamFailed,
    UpstreamUnavailable,
)
from mirror.stats import UpstreamStats
from mirror.upstream.destinations import RedirectRefused
from mirror.upstream.diagnosis import diagnose
from mirror.upstream.egress import ProxyRoute
from mirror.upstream.endpoints import (
    REGISTRY_NOT_FOUND,
    Endpoint,
    Page,
    Target,
    build_endpoints,
    parse_error_body,
    read_error_body,
)
from mirror.upstream.health import Health
from mirror.upstream.trust import explain, tls_failure

log = logging.getLogger(__name__)

# Transient upstream failures are retried this many times, after 0.25 s, then 0.5 s.
RETRIES = 2
RETRY_BACKOFF = 0.25
_RETRY_STATUSES = frozenset({500, 502, 503, 504})


class RegistrySession:
    """Requests to one upstream: through its mirrors, then to the registry; never when offline."""

    def __init__(
        self,
        config: UpstreamConfig,
        counters: UpstreamStats,
        proxy_env: ProxyEnvironment | None,
        hooks: Mapping[str, list[Callable[..., Any]]],
        *,
        offline: bool = False,
    ) -> None:
        self.name = config.name
        self.url = config.url
        self.offline = offline or config.offline  # never dial out: serve what is cached
        self.counters = counters
        counters.offline = self.offline
        self.host = httpx.URL(config.url).host
        self.health = Health()  # the last endpoint's: the registry's, or the last mirror's with mirrors_only
        self.route = ProxyRoute.for_upstream(config.proxy, proxy_env or ProxyEnvironment())
        self.endpoints = build_endpoints(config, self.route, self.health, hooks)

    def failure(self, exc: httpx.HTTPError, *, during: str = "request", health: Health | None = None) -> RegistryError:
        """Translate an httpx error into ours, naming the upstream but never its credentials."""
        self.counters.errors += 1
        health = health or self.health
        reason = type(exc).__name__
        tls = tls_failure(exc)
        if tls is not None:
            message, setting = explain(tls, self.name, _where(exc))
            self._failed(health, message, setting)
            return UpstreamUnavailable(message, detail={"upstream": self.name, "setting": setting})
        if isinstance(exc, RedirectRefused):
            self._failed(health, str(exc), None)
            return UpstreamFailed(str(exc), detail={"upstream": self.name})
        if isinstance(exc, httpx.TooManyRedirects):
            self._failed(health, f"{during}: redirected too many times", None)
            return UpstreamUnavailable(
                f"upstream {self.name} redirected too many times", detail={"upstream": self.name}
            )
        if isinstance(exc, httpx.ProxyError):
            refused = self.proxy_refused(str(exc), _where(exc))
            self._failed(health, refused.message, "proxy")
            return refused
        if during == "download":
            self._failed(health, f"{during}: {reason}: {exc}" if str(exc) else f"{during}: {reason}", None)
            return UpstreamFailed(
                f"upstream {self.name} broke off the download: {reason}", detail={"upstream": self.name}
            )
        where = _where(exc)
        via_proxy = self.route.proxy_for(httpx.URL(self.url)) is not None
        why, fix = diagnose(exc, self.name, where, via_proxy=via_proxy)
        message = f"upstream {self.name} ({self.url}) is unreachable: {why}"
        self._failed(health, message, fix)
        detail = {"upstream": self.name, **({"setting": fix} if fix else {})}
        return UpstreamUnavailable(message, detail=detail)

    def _failed(self, health: Health, message: str, setting: str | None) -> None:
        """Count a failure; say it once, at WARNING, when the upstream turns from answering to failing."""
        if health.failed(message, setting):
            log.warning("%s", message if message.startswith("upstream ") else f"upstream {self.name}: {message}")

    def proxy_refused(self, answer: str, where: str) -> UpstreamUnavailable:
        setting = f'[upstreams."{self.name}"] proxy' if self.route.explicit else "HTTPS_PROXY/HTTP_PROXY"
        hint = f"check the credentials in {setting}" if answer.startswith("407") else "the proxy could not reach it"
        return UpstreamUnavailable(
            f"upstream {self.name}: the egress proxy ({self.route.describe()}) answered {answer[:100]} "
            f"for {where}; {hint}",
            detail={"upstream": self.name, "setting": "proxy"},
        )

    async def aclose(self) -> None:
        for endpoint in self.endpoints:
            await endpoint.client.aclose()

    @asynccontextmanager
    async def send(
        self,
        method: str,
        target: Target | Page,
        headers: list[tuple[str, str]] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> AsyncIterator[tuple[httpx.Response, Endpoint]]:
        response, endpoint = await self.exchange(method, target, headers, params)
        try:
            yield response, endpoint
        finally:
            await response.aclose()

    async def exchange(
        self,
        method: str,
        target: Target | Page,
        headers: list[tuple[str, str]] | None,
        params: Mapping[str, str] | None,
    ) -> tuple[httpx.Response, Endpoint]:
        """The first usable answer: each mirror in turn, then the registry; a page from the endpoint that linked it.

        A mirror that cannot be reached, fails (5xx, 429, a refusal) or does not mirror this
        registry (NAME_UNKNOWN) is passed over. The registry's own "not found" from a mirror is
        the answer. The last endpoint's answer is the answer, whatever it is.
        """
        if self.offline:
            what = target.describe(self.name) if isinstance(target, Target) else target.url
            raise Offline(
                f"the mirror is offline for {self.name} and does not ask it; {what} is not cached",
                detail={"upstream": self.name},
            )
        endpoints = [target.endpoint] if isinstance(target, Page) else self.endpoints
        for endpoint in endpoints[:-1]:
            if endpoint.health.cooling_down():
                continue
            try:
                response = await self.send_with_retries(endpoint, method, target, headers, params, retries=0)
            except RegistryError as exc:
                log.warning("upstream %s: %s failed (%s); asking the next", self.name, endpoint.describe(), exc.message)
                continue
            if not await self._passes_over(endpoint, method, target, response):
                return response, endpoint
        last = endpoints[-1]
        return await self.send_with_retries(last, method, target, headers, params), last

    async def _passes_over(
        self, endpoint: Endpoint, method: str, target: Target | Page, response: httpx.Response
    ) -> bool:
        """Whether a mirror's answer means "ask the next one" (and then it is closed and counted against it)."""
        status = response.status_code
        if status < 400 or status == 416:
            return False
        code, message, detail = None, None, None
        if status == 404:
            body = await read_error_body(response)
            if method == "HEAD":  # HEAD says nothing of why: GET says
                answer = await self.send_with_retries(endpoint, "GET", target, None, None, retries=0)
                try:
                    body = await read_error_body(answer) if answer.status_code == 404 else b""
                finally:
                    await answer.aclose()
            code, message, detail = parse_error_body(body)
            if code in REGISTRY_NOT_FOUND:
                await response.aclose()
                error = (ManifestUnknown if code == "MANIFEST_UNKNOWN" else BlobUnknown)(message, detail=detail)
                raise error
        await response.aclose()
        reason = f"answered {status}" + (f" {code}" if code else "")
        if status != 404:
            self._failed(endpoint.health, f"{endpoint.describe()} {reason}", None)
        log.warning("upstream %s: %s %s; asking the next", self.name, endpoint.describe(), reason)
        return True

    async def send_with_retries(
        self,
        endpoint: Endpoint,
        method: str,
        target: Target | Page,
        headers: list[tuple[str, str]] | None,
        params: Mapping[str, str] | None,
        retries: int = RETRIES,
    ) -> httpx.Response:
        """Send, retrying transient failures with backoff; no byte has reached a client yet."""
        if wait := endpoint.health.cooling_down():
            health = endpoint.health
            detail = {"upstream": self.name}
            if health.last_error_setting:
                detail["setting"] = health.last_error_setting
            raise UpstreamUnavailable(
                f"upstream {self.name} ({endpoint.describe()}) failed {health.consecutive_failures} times in a row; "
                f"not asking it again for {wait:.0f} s. Last error: {health.last_error_message}",
                detail=detail,
            )
        for attempt in range(retries + 1):
            request = endpoint.request(method, target, headers, params)
            try:
                response = await endpoint.client.send(request, stream=True)
            except httpx.HTTPError as exc:
                if attempt == retries or not _transient(exc):
                    raise self.failure(exc, health=endpoint.health) from exc
                log.info("upstream %s: %s on %s %s, retrying", self.name, type(exc).__name__, method, request.url.path)
            else:
                if response.status_code < 500 and response.status_code != 429 and endpoint.health.succeeded():
                    log.info("upstream %s: %s answers again", self.name, endpoint.describe())
                if response.status_code not in _RETRY_STATUSES or attempt == retries:
                    return response
                await response.aclose()
                log.info(
                    "upstream %s answered %d to %s %s, retrying",
                    self.name,
                    response.status_code,
                    method,
                    request.url.path,
                )
            self.counters.retries += 1
            await asyncio.sleep(RETRY_BACKOFF * 2**attempt)
        raise AssertionError("unreachable")

    async def raise_for_status(self, response: httpx.Response, not_found: type[RegistryError]) -> None:
        status = response.status_code
        if status < 300:
            return
        body = await read_error_body(response)
        code, message, detail = parse_error_body(body)
        headers = {}
        if status == 429:
            self._failed(self.health, "answered 429 (rate limited)", None)
            if "retry-after" in response.headers:
                headers["Retry-After"] = response.headers["retry-after"]
            raise TooManyRequests(message or f"upstream {self.name} is rate limiting", detail=detail, headers=headers)
        if status == 407:  # an http:// upstream forwarded by a proxy that wants credentials
            self.counters.errors += 1
            refused = self.proxy_refused("407 Proxy Authentication Required", response.request.url.host)
            self._failed(self.health, refused.message, "proxy")
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
            self._failed(self.health, "answered 400: a client certificate is required", "client_cert")
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
        self._failed(self.health, f"answered {status}", None)
        raise UpstreamUnavailable(
            f"upstream {self.name} answered {status}", detail={"upstream": self.name, "status": status}
        )

    async def read(self, response: httpx.Response, endpoint: Endpoint, *, limit: int) -> bytes:
        """The whole answer, refused past `limit` bytes: an upstream cannot fill our memory."""
        body = bytearray()
        try:
            async for chunk in response.aiter_raw():
                body += chunk
                if len(body) > limit:
                    raise UpstreamFailed(
                        f"upstream {self.name} answered {response.request.url.path[:200]} with more than {limit} bytes",
                        detail={"upstream": self.name},
                    )
        except httpx.HTTPError as exc:
            raise self.failure(exc, health=endpoint.health) from exc
        return bytes(body)


def _transient(exc: httpx.HTTPError) -> bool:
    """Worth another try: a network failure, not a certificate or a proxy's refusal."""
    if not isinstance(exc, httpx.TransportError) or isinstance(exc, RedirectRefused) or tls_failure(exc) is not None:
        return False
    return not (isinstance(exc, httpx.ProxyError) and str(exc).startswith("407"))


def _where(exc: httpx.HTTPError) -> str:
    """host:port of the request that failed, which may be a CDN's rather than the upstream's."""
    try:
        url = exc.request.url
    except RuntimeError:  # an error raised before any request was made
        return "the upstream"
    return f"{url.host}:{url.port or (443 if url.scheme == 'https' else 80)}"
