"""Where an upstream's registry API answers: its mirrors in order, then the registry itself.

containerd's `hosts.toml` is the model: each mirror is told which registry with `?ns=<host>`,
and a mirror that fails is passed over for the next, then for the registry.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from mirror import __version__
from mirror.config import MirrorConfig, UpstreamConfig
from mirror.registry.patterns import compile_pattern
from mirror.upstream.auth import Namespaces, RegistryAuth, basic, origin_of
from mirror.upstream.destinations import ANY_CDN, ORIGIN_ONLY, REDIRECTS
from mirror.upstream.egress import EgressTransport, ProxyRoute
from mirror.upstream.health import Health
from mirror.upstream.trust import Trust

log = logging.getLogger(__name__)

ERROR_BODY_LIMIT = 64 * 1024
# The request extension naming what a request asks for (manifests, blobs, tags, referrers): set
# where the request is made, so nothing needs to read it back out of the URL.
OBJECT = "mirror.object"
# A mirror's 404 with one of these codes is the registry's own answer, passed on; any other
# 404 (NAME_UNKNOWN: a mirror that does not mirror this registry) means: ask the next one.
REGISTRY_NOT_FOUND = frozenset({"MANIFEST_UNKNOWN", "BLOB_UNKNOWN"})


@dataclass(frozen=True)
class Target:
    """What a request asks for: `/v2/<repository>/<rest>` at whichever endpoint answers it."""

    repository: str  # as the registry names it (Docker Hub's `library/` applied), before any prefix
    rest: str  # `manifests/<reference>`, `blobs/<digest>`, `tags/list`, `referrers/<digest>`

    def describe(self, registry: str) -> str:
        """The image or blob, for messages: `docker.io/library/alpine:3.19`, `…@sha256:…`, `… blob sha256:…`."""
        kind, _, reference = self.rest.partition("/")
        name = f"{registry}/{self.repository}"
        if kind == "manifests":
            return f"{name}{'@' if ':' in reference else ':'}{reference}"
        if kind == "blobs":
            return f"blob {reference} of {name}"
        return f"{name} ({self.rest})"


@dataclass(frozen=True)
class Page:
    """A next page the answering endpoint linked to: asked of that endpoint only."""

    endpoint: Endpoint
    url: str


class Endpoint:
    """One place the upstream's API answers: a mirror of it (asked with `?ns=`), or the registry at `url`."""

    def __init__(self, url: str, client: httpx.AsyncClient, health: Health, *, ns: str | None, prefix: str) -> None:
        self.url = url
        self.client = client
        self.health = health
        self.ns = ns  # a mirror: the registry it is asked for
        self.prefix = prefix  # put in front of every repository (a Harbor proxy project)
        self.base_path = httpx.URL(url).path.rstrip("/")

    @property
    def is_mirror(self) -> bool:
        return self.ns is not None

    def describe(self) -> str:
        return f"mirror {self.url}" if self.is_mirror else self.url

    def request(
        self,
        method: str,
        target: Target | Page,
        headers: list[tuple[str, str]] | None,
        params: Mapping[str, str] | None,
    ) -> httpx.Request:
        if isinstance(target, Page):
            return self.client.build_request(method, target.url, headers=headers, extensions={REDIRECTS: ORIGIN_ONLY})
        repository = f"{self.prefix}/{target.repository}" if self.prefix else target.repository
        if self.ns is not None:
            params = {**(params or {}), "ns": self.ns}
        path = f"/v2/{repository}/{target.rest}"
        kind = target.rest.partition("/")[0]
        extensions = {REDIRECTS: ANY_CDN if kind == "blobs" else ORIGIN_ONLY, OBJECT: kind}
        return self.client.build_request(method, path, headers=headers, params=params, extensions=extensions)

    def next_page(self, answered: httpx.URL, link: str) -> Page | None:
        """The page a `Link` names, as a URL at this endpoint; a `/v2/…` path from a registry behind a
        path (nginx in front of distribution) is put below the base path. None for a page elsewhere:
        another origin's list is not this registry's, and our credentials do not go there."""
        if link.startswith("/v2/") and self.base_path:
            link = self.base_path + link
        url = answered.join(link)
        if origin_of(url) != origin_of(answered):
            log.warning("%s linked its next page to another origin (%s); the list ends here", self.describe(), url.host)
            return None
        return Page(self, str(url))


def build_endpoints(
    config: UpstreamConfig,
    route: ProxyRoute,
    health: Health,
    hooks: Mapping[str, list[Callable[..., Any]]],
) -> list[Endpoint]:
    """The upstream's mirrors in order, then its url (unless mirrors_only); `health` is the last one's."""
    limits = httpx.Limits(max_connections=max(64, config.max_connections + 16), max_keepalive_connections=32)
    timeout = httpx.Timeout(config.read_timeout, connect=config.connect_timeout, pool=config.connect_timeout)

    def client(
        url: str, login: MirrorConfig | UpstreamConfig, namespaces: Namespaces | None = None
    ) -> httpx.AsyncClient:
        base_path = httpx.URL(url).path.rstrip("/")
        return httpx.AsyncClient(
            base_url=url,
            auth=RegistryAuth(httpx.URL(url), login.username, login.password, base_path, namespaces),
            follow_redirects=True,
            max_redirects=5,
            timeout=timeout,
            transport=EgressTransport(
                route,
                Trust(login.ca_file, login.client_cert, login.client_key),
                limits,
                upstream=config.name,
                origin=httpx.URL(url),
                redirect_hosts=frozenset(config.redirect_hosts),
            ),
            headers={"User-Agent": f"mirror/{__version__}", "Accept-Encoding": "identity"},
            event_hooks=dict(hooks),
            trust_env=False,
        )

    endpoints = [Endpoint(m.url, client(m.url, m), Health(), ns=config.name, prefix="") for m in config.mirrors]
    if not config.mirrors_only:
        origin = client(config.url, config, namespace_logins(config))
        endpoints.append(Endpoint(config.url, origin, Health(), ns=None, prefix=config.repository_prefix))
    endpoints[-1].health = health
    return endpoints


def relogin(endpoints: list[Endpoint], config: UpstreamConfig) -> None:
    """New logins from a reloaded config: each endpoint's client gets a new auth (its tokens start over)."""
    logins: dict[str, MirrorConfig | UpstreamConfig] = {m.url: m for m in config.mirrors}
    for endpoint in endpoints:
        login = config if not endpoint.is_mirror else logins.get(endpoint.url)
        if login is None:
            continue  # a mirror no longer listed: it goes at the restart
        namespaces = namespace_logins(config) if not endpoint.is_mirror else None
        endpoint.client.auth = RegistryAuth(
            httpx.URL(endpoint.url), login.username, login.password, endpoint.base_path, namespaces
        )


def namespace_logins(config: UpstreamConfig) -> Namespaces:
    """Each `credentials` pattern with its login, the most specific first: most literal
    characters, then fewest wildcards. Patterns are written as clients name repositories,
    so a `repository_prefix` is taken off before they are tried."""
    ranked = []
    for login in config.credentials:
        credential = basic(login.username, login.password)
        assert credential is not None
        for pattern in login.repositories:
            literal = len(pattern.replace("*", ""))
            ranked.append((-literal, pattern.count("*"), pattern, credential))
    ranked.sort(key=lambda entry: entry[:2])
    prefix = f"{config.repository_prefix}/" if config.repository_prefix else ""

    def matcher(pattern: str) -> Callable[[str], bool]:
        compiled = compile_pattern(pattern)
        return lambda repository: compiled.match(repository.removeprefix(prefix))

    return [(matcher(pattern), credential) for _, _, pattern, credential in ranked]


async def read_error_body(response: httpx.Response) -> bytes:
    """At most ERROR_BODY_LIMIT bytes of an error answer (none for HEAD); a broken one reads as empty."""
    body = b""
    if response.request.method == "HEAD":
        return body
    try:
        async for chunk in response.aiter_raw():
            body += chunk
            if len(body) > ERROR_BODY_LIMIT:
                break
    except httpx.HTTPError:
        pass
    return body


def parse_error_body(body: bytes) -> tuple[str | None, str | None, object]:
    """The first error's code, message and detail, from the spec's JSON error body."""
    try:
        error = json.loads(body)["errors"][0]
        return str(error["code"]), str(error.get("message", "")) or None, error.get("detail")
    except (ValueError, KeyError, IndexError, TypeError):
        return None, None, None
