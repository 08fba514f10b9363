"""Upstream auth as an httpx flow: Docker-style bearer tokens, or Basic.

The flow answers a 401 challenge once: for `Bearer`, it fetches a token from the realm for
the request's repository scope (anonymously, or with Basic credentials when the realm is on
the upstream's own site) and caches it until shortly before it expires.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import logging
import re
import time
from collections.abc import AsyncGenerator, Callable, Generator
from dataclasses import dataclass
from functools import cache

import httpx
from cachetools import TLRUCache
from publicsuffixlist import PublicSuffixList

from mirror.registry.errors import RegistryError
from mirror.registry.route import parse_api_path

log = logging.getLogger(__name__)

DEFAULT_TOKEN_LIFETIME = 60.0
_PARAM_RE = re.compile(r'\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?')


@dataclass(frozen=True)
class Challenge:
    scheme: str
    params: dict[str, str]


def parse_challenge(header: str) -> Challenge | None:
    """Parse one `WWW-Authenticate` challenge, e.g. `Bearer realm="…",service="…"`."""
    scheme, _, rest = header.strip().partition(" ")
    if not scheme or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", scheme):
        return None
    params: dict[str, str] = {}
    position = 0
    rest = rest.strip()
    while position < len(rest):
        match = _PARAM_RE.match(rest, position)
        if match is None or match.end() == position:
            return None
        quoted, bare = match.group(2), match.group(3)
        value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
        params[match.group(1).lower()] = value
        position = match.end()
    return Challenge(scheme.lower(), params)


def repository_scope(request: httpx.Request, base_path: str = "") -> str | None:
    """The token scope a request needs: its repository, found below the registry's base path."""
    path = request.url.path
    if base_path and path.startswith(base_path + "/"):
        path = path[len(base_path) :]
    try:
        api = parse_api_path(path, b"")  # the registry API's one grammar
    except RegistryError:
        return None
    return f"repository:{api.name}:pull" if api is not None else None


def same_site(host_a: str, host_b: str) -> bool:
    """Whether two hosts share a registrable domain, by the Public Suffix List: `auth.docker.io` and
    `registry-1.docker.io` do, `evil.co.uk` and `registry.co.uk` do not. IPs and single labels must be equal."""
    if host_a == host_b:
        return True
    for host in (host_a, host_b):
        try:
            ipaddress.ip_address(host)
            return False
        except ValueError:
            pass
    site = _public_suffixes().privatesuffix(host_a.lower())
    return site is not None and site == _public_suffixes().privatesuffix(host_b.lower())


@cache
def _public_suffixes() -> PublicSuffixList:
    """The list bundled with the package (its releases follow the list's): nothing is fetched at run time."""
    return PublicSuffixList()


def origin_of(url: httpx.URL) -> tuple[str, str, int | None]:
    """(scheme, host, port) with the scheme's default port filled in: what credentials are bound to."""
    return url.scheme, url.host, url.port or {"https": 443, "http": 80}.get(url.scheme)


@dataclass(frozen=True)
class _Token:
    value: str
    expires_at: float


def basic(username: str | None, password: str | None) -> str | None:
    if username is None or password is None:
        return None
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


# Per namespace: (a test of the repository's name, its Basic credential), most specific first.
Namespaces = list[tuple[Callable[[str], bool], str]]


class RegistryAuth(httpx.Auth):
    def __init__(
        self,
        upstream: httpx.URL,
        username: str | None,
        password: str | None,
        base_path: str = "",
        namespaces: Namespaces | None = None,
    ) -> None:
        self.upstream_host = upstream.host
        self.origin = origin_of(upstream)  # the Basic credential and tokens go to this origin only
        self.base_path = base_path  # where /v2/ is below: Artifactory's and Nexus's API paths
        self._default_basic = basic(username, password)
        self._namespaces = namespaces or []
        self._tokens: TLRUCache[str, _Token] = TLRUCache(
            maxsize=4096, ttu=lambda _key, token, _now: token.expires_at, timer=time.monotonic
        )
        self._challenge: Challenge | None = None
        self._locks: dict[str, asyncio.Lock] = {}

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        raise RuntimeError("RegistryAuth works with httpx.AsyncClient only")

    def _basic(self, scope: str) -> str | None:
        """The credential for a scope's repository: its namespace's, else the upstream's."""
        repository = scope.split(":")[1] if scope.count(":") == 2 else None
        if repository is not None:
            for matches, credential in self._namespaces:
                if matches(repository):
                    return credential
        return self._default_basic

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        scope = repository_scope(request, self.base_path) or ""
        self._authorize(request, scope)
        response = yield request
        if response.status_code != 401:
            return
        challenge = parse_challenge(response.headers.get("www-authenticate", ""))
        if challenge is None or challenge.scheme not in ("bearer", "basic"):
            return
        self._challenge = challenge
        if challenge.scheme == "bearer":
            stale = self._tokens.pop(scope, None)
            async with self._locks.setdefault(scope, asyncio.Lock()):
                token = self._tokens.get(scope)
                if token is None or token is stale:
                    token_request = self._token_request(challenge, scope)
                    if token_request is None:
                        return
                    token_response = yield token_request
                    await token_response.aread()
                    token = self._store_token(scope, token_response)
                    if token is None:
                        return
        elif self._basic(scope) is None:
            return
        self._authorize(request, scope)
        yield request

    def _authorize(self, request: httpx.Request, scope: str) -> None:
        if origin_of(request.url) != self.origin:  # another port or scheme on the same host is another server
            return
        token = self._tokens.get(scope)
        if token is not None:
            request.headers["Authorization"] = f"Bearer {token.value}"
        elif self._challenge is not None and self._challenge.scheme == "basic":
            credential = self._basic(scope)
            if credential is not None:
                request.headers["Authorization"] = credential

    def _token_request(self, challenge: Challenge, scope: str) -> httpx.Request | None:
        realm = challenge.params.get("realm")
        if not realm:
            log.warning("upstream %s sent a bearer challenge without a realm", self.upstream_host)
            return None
        url = httpx.URL(realm)
        if url.scheme not in ("http", "https"):
            return None
        params = {"service": challenge.params["service"]} if "service" in challenge.params else {}
        if scope:
            params["scope"] = scope
        request = httpx.Request("GET", url.copy_merge_params(params))
        credential = self._basic(scope)
        downgrade = url.scheme == "http" and self.origin[0] == "https"
        if credential is not None and same_site(url.host, self.upstream_host) and not downgrade:
            request.headers["Authorization"] = credential
        return request

    def _store_token(self, scope: str, response: httpx.Response) -> _Token | None:
        if response.status_code != 200:
            log.warning("token realm %s answered %d", response.request.url.host, response.status_code)
            return None
        try:
            body = response.json()
            value = body.get("token") or body.get("access_token")
            lifetime = float(body.get("expires_in") or DEFAULT_TOKEN_LIFETIME)
        except (ValueError, AttributeError, TypeError):
            value = None
        if not isinstance(value, str) or not value:
            log.warning("token realm %s sent no token", response.request.url.host)
            return None
        # Refresh a little early so a token never expires in flight.
        margin = min(30.0, lifetime * 0.1)
        token = _Token(value, time.monotonic() + max(lifetime - margin, 1.0))
        self._tokens[scope] = token
        return token
