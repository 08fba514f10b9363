"""One httpx client per upstream registry; the only module that sees httpx errors."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from mirror import requestid
from mirror.config import ProxyEnvironment, UpstreamConfig, restart_keys
from mirror.link import Link, LinkPolicy
from mirror.registry.errors import (
    BlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameUnknown,
    NotFound,
    UpstreamFailed,
)
from mirror.registry.mediatypes import MAX_MANIFEST, OCI_INDEX, NotAManifest, manifest_media_type
from mirror.registry.reference import DOCKER_HUB, DOCKER_HUB_HOSTS, Digest, docker_hub_name
from mirror.registry.referrers import index_descriptors
from mirror.stats import Stats, UpstreamStats
from mirror.upstream.body import UpstreamBody
from mirror.upstream.egress import ProxyRoute
from mirror.upstream.endpoints import (
    OBJECT,
    Endpoint,
    Page,
    Target,
    relogin,
)
from mirror.upstream.health import Health
from mirror.upstream.policy import RepositoryPolicy
from mirror.upstream.session import RegistrySession

log = logging.getLogger(__name__)

MAX_LIST_PAGES = 1000  # of an upstream's tag list or referrers: a bound on an upstream that pages forever
MAX_LIST_PAGE_BYTES = 4 * 1024 * 1024  # one page of either: 1,000 tags of the longest kind take 130 KB
MAX_TAGS = 50_000  # of one repository: the busiest public ones list a few thousand


# What an upstream's answer says about quotas (Docker Hub), passed on to clients, so that an
# edge mirror sees what its regional mirror saw.
QUOTA_HEADERS = ("ratelimit-limit", "ratelimit-remaining", "docker-ratelimit-source")


@dataclass(frozen=True)
class Staleness:
    """A mirror upstream served its cached answer because its own upstream failed (`X-Cache: STALE`)."""

    age: float  # seconds since that mirror last had it from its upstream (its `Age`)


@dataclass(frozen=True)
class ManifestHead:
    digest: str | None
    media_type: str
    size: int | None
    stale: Staleness | None = None
    quota: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class FetchedManifest:
    body: bytes
    media_type: str
    digest: str | None
    stale: Staleness | None = None
    quota: tuple[tuple[str, str], ...] = ()


class Upstream:
    """One upstream registry: what the mirror asks of it (manifests, blobs, tags, referrers)."""

    def __init__(
        self, config: UpstreamConfig, stats: Stats, proxy_env: ProxyEnvironment | None = None, *, offline: bool = False
    ) -> None:
        hooks: dict[str, list[Callable[..., Any]]] = {"request": [self._count_request], "response": [self._read_quota]}
        # Held, not inherited: the session is how requests reach the registry; this is what is asked.
        self.session = RegistrySession(config, stats.upstream(config.name), proxy_env, hooks, offline=offline)
        self.name = config.name
        self.url = config.url
        self.mirrored = any(endpoint.is_mirror for endpoint in self.endpoints)
        self.policy = RepositoryPolicy(config)
        self.config = config  # the last one read (a reload changes what it can in place)
        self.built = config  # what the clients and transports were built from: restart keys are as here
        self.link = Link(
            LinkPolicy(
                config.max_connections, config.max_connections_per_blob, config.parallel_threshold, config.max_bandwidth
            ),
            config.name,
        )

    @property
    def offline(self) -> bool:
        """Never dial out: serve what is cached (`[server] offline`, the upstream's own, or --offline)."""
        return self.session.offline

    @property
    def counters(self) -> UpstreamStats:
        return self.session.counters

    @property
    def health(self) -> Health:
        return self.session.health

    @property
    def route(self) -> ProxyRoute:
        return self.session.route

    @property
    def endpoints(self) -> list[Endpoint]:
        return self.session.endpoints

    @property
    def host(self) -> str:
        return self.session.host

    async def aclose(self) -> None:
        await self.session.aclose()

    def reconfigure(self, config: UpstreamConfig, *, offline: bool) -> list[str]:
        """Apply what a reload may change (allow, deny, block, keep_deleted_tags, logins, offline);
        the keys whose change needs a restart."""
        self.policy = RepositoryPolicy(config)
        self.session.offline = self.counters.offline = offline or config.offline
        relogin(self.endpoints, config)
        # Against what runs (the config this upstream was built from), not the last file read: a
        # key changed and then set back needs no restart. Which keys need one (the clients, their
        # transports and the link are built from them) is declared on UpstreamConfig's fields.
        changed = restart_keys(self.built, config, f'upstreams."{self.name}"')
        self.config = config
        return changed

    async def _count_request(self, request: httpx.Request) -> None:
        self.counters.requests += 1
        request_id = requestid.current.get()
        if request_id is not None:
            request.headers[requestid.HEADER] = request_id  # to the upstream, and to other mirrors

    async def _read_quota(self, response: httpx.Response) -> None:
        request = response.request
        if request.method == "GET" and response.status_code < 400 and request.extensions.get(OBJECT) == "manifests":
            self.counters.manifest_gets += 1  # what Docker Hub counts as a pull (HEADs and refusals are free)
        headers = response.headers
        self.counters.saw_ratelimit(
            headers.get("ratelimit-limit"), headers.get("ratelimit-remaining"), headers.get("docker-ratelimit-source")
        )

    def repository(self, name: str) -> str:
        return docker_hub_name(name) if self.name == DOCKER_HUB else name

    def _target(self, repository: str, rest: str) -> Target:
        return Target(self.repository(repository), rest)

    async def head_manifest(self, repository: str, reference: str, accept: list[str]) -> ManifestHead:
        target = self._target(repository, f"manifests/{reference}")
        async with self.session.send("HEAD", target, headers=[("Accept", a) for a in accept]) as (response, endpoint):
            await self.session.raise_for_status(response, ManifestUnknown)
            length = response.headers.get("content-length", "")
            return ManifestHead(
                digest=response.headers.get("docker-content-digest"),
                media_type=_media_type(response),
                size=int(length) if length.isdigit() else None,
                stale=_staleness(response, endpoint),
                quota=_quota(response),
            )

    async def get_manifest(self, repository: str, reference: str, accept: list[str]) -> FetchedManifest:
        target = self._target(repository, f"manifests/{reference}")
        async with self.session.send("GET", target, headers=[("Accept", a) for a in accept]) as (response, endpoint):
            await self.session.raise_for_status(response, ManifestUnknown)
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
                raise self.session.failure(exc, health=endpoint.health) from exc
            self.counters.bytes_fetched += len(body)
            try:
                media_type = manifest_media_type(bytes(body), _media_type(response, default=""))
            except NotAManifest as exc:
                raise UpstreamFailed(f"upstream {self.name} answered a manifest that is not one: {exc}") from None
            return FetchedManifest(
                bytes(body),
                media_type,
                response.headers.get("docker-content-digest"),
                stale=_staleness(response, endpoint),
                quota=_quota(response),
            )

    @asynccontextmanager
    async def open_blob(
        self, repository: str, digest: Digest, start: int = 0, end: int | None = None
    ) -> AsyncIterator[UpstreamBody]:
        """Bytes [start, end) of the blob (end None: to its end), with Range unless that is all of it.

        The answer says whether the upstream honoured Range (`ranged`). Each call asks the
        registry again, so an expired CDN URL is never reused.
        """
        # A mirror of this registry is asked for the whole blob: it fetches its own ranges from the
        # registry, and ranges cut differently here would each miss its download and cost the
        # registry those bytes again (1.33× a 24 MiB blob, tests/test_tiers.py). Resumes still ask
        # from where they are.
        ranged = start > 0 or (end is not None and not self.mirrored)
        headers = [("Range", f"bytes={start}-{'' if end is None else end - 1}")] if ranged else None
        target = self._target(repository, f"blobs/{digest}")
        response, endpoint = await self.session.exchange("GET", target, headers, None)
        if response.status_code in (401, 403) and response.history:
            # A CDN refused the URL the registry redirected to (signed URLs expire; Docker Hub's
            # within minutes): ask the registry once more, for a fresh one.
            log.info(
                "upstream %s: redirect target answered %d for %s; asking again", self.name, response.status_code, digest
            )
            await response.aclose()
            self.counters.retries += 1
            response = await self.session.send_with_retries(endpoint, "GET", target, headers, None)
        try:
            await self.session.raise_for_status(response, BlobUnknown)
            yield UpstreamBody(
                response,
                start,
                upstream=self.name,
                counters=self.counters,
                failure=lambda exc: self.session.failure(exc, during="download", health=endpoint.health),
            )
        finally:
            await response.aclose()

    async def head_blob(self, repository: str, digest: Digest) -> int | None:
        async with self.session.send("HEAD", self._target(repository, f"blobs/{digest}")) as (response, _):
            await self.session.raise_for_status(response, BlobUnknown)
            length = response.headers.get("content-length", "")
            return int(length) if length.isdigit() else None

    async def referrers(self, repository: str, digest: Digest) -> list[dict[str, Any]] | None:
        """The descriptors the upstream's referrers API lists (following its pages); None if it has no such API.

        The spec forbids a 404 from a registry that has the API, so a 404 says it has not.
        """
        found: list[dict[str, Any]] = []
        target: Target | Page | None = self._target(repository, f"referrers/{digest}")
        for _ in range(MAX_LIST_PAGES):
            if target is None:
                break
            async with self.session.send("GET", target, headers=[("Accept", OCI_INDEX)]) as (response, endpoint):
                if response.status_code == 404 and not found:
                    return None
                await self.session.raise_for_status(response, NotFound)
                body = await self.session.read(response, endpoint, limit=MAX_LIST_PAGE_BYTES)
                link = next_link(response.headers.get("link"))
                target = endpoint.next_page(response.url, link) if link else None
            found += index_descriptors(body)
        return found

    async def all_tags(self, repository: str) -> list[str]:
        """Every tag of a repository, following the upstream's pages (`Link`) until one brings none new.

        The stop on no progress also ends a loop with an upstream that ignores `last`.
        """
        found: dict[str, None] = {}
        target: Target | Page | None = self._target(repository, "tags/list")
        for _ in range(MAX_LIST_PAGES):
            if target is None:
                break
            async with self.session.send("GET", target) as (response, endpoint):
                await self.session.raise_for_status(response, NameUnknown)
                body = await self.session.read(response, endpoint, limit=MAX_LIST_PAGE_BYTES)
                link = next_link(response.headers.get("link"))
                page = endpoint.next_page(response.url, link) if link else None
            tags = _tags_of(body, self.name)
            new = [tag for tag in tags if tag not in found]
            found.update(dict.fromkeys(new[: MAX_TAGS - len(found)]))
            if len(found) >= MAX_TAGS:
                log.warning(
                    "upstream %s lists more than %d tags of %s; the list stops there", self.name, MAX_TAGS, repository
                )
                break
            target = page if new else None
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


def anonymous_quota_warning(config: UpstreamConfig, *, offline: bool = False) -> str | None:
    """What pulling Docker Hub without an account means for a site, when that is how it is set up:
    only when the upstream really is Docker Hub (not an internal registry named docker.io) and is asked."""
    if config.name != DOCKER_HUB or config.username is not None or offline or config.offline:
        return None
    if httpx.URL(config.url).host not in DOCKER_HUB_HOSTS or config.mirrors_only:
        return None
    return (
        "docker.io has no credentials: Docker Hub counts anonymous pulls against a small hourly quota "
        "per source IP address, which every client behind this site's NAT shares, and answers 429 "
        "once it is spent. Each cache miss of a manifest counts as a pull (cache hits do not). "
        'Set [upstreams."docker.io"] username and password (an access token) for the account\'s larger quota; '
        "the dashboard and /metrics show the quota Docker Hub reports."
    )


def _staleness(response: httpx.Response, endpoint: Endpoint) -> Staleness | None:
    """A mirror's answer it served stale (`X-Cache: STALE`), with its `Age`: it stays stale here."""
    if not endpoint.is_mirror or response.headers.get("x-cache", "").upper() != "STALE":
        return None
    age = response.headers.get("age", "")
    return Staleness(float(age) if age.isdigit() else 0.0)


def _quota(response: httpx.Response) -> tuple[tuple[str, str], ...]:
    return tuple((name, response.headers[name]) for name in QUOTA_HEADERS if name in response.headers)


def _media_type(response: httpx.Response, default: str = "application/octet-stream") -> str:
    content_type: str = response.headers.get("content-type", default)
    return content_type.split(";")[0].strip().lower()
