"""The composition root: every part of one running mirror, built once from the config.

`mirror serve` builds a `Mirror` before the server starts and hands it to the app and to
the HTTP protocol's fast path; nothing finds it through the framework.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import httpx

from mirror.cache.blobs import BlobStore
from mirror.cache.directory import CacheDirectory
from mirror.cache.journal import TagJournal
from mirror.cache.kept import KeptLists
from mirror.cache.layout import TagEntry
from mirror.cache.links import BlobLinks
from mirror.cache.metadata import ManifestCache
from mirror.cache.pins import forget_fetching, refuse_pinned
from mirror.cache.removal import Removal, Target, apply_to_index, plan_removal
from mirror.cache.tags import LocalTagStore, TagStore
from mirror.cache.verdicts import VerdictRecords
from mirror.config import Config, FleetConfig, config_hash, restart_keys
from mirror.pinning import PinKeeper
from mirror.proxy import BlobSource, Proxy, SignaturePolicy
from mirror.proxy.coordination import Alone, Coordination
from mirror.registry.errors import NameUnknown, RegistryError
from mirror.registry.reference import Digest, is_registry_host, parse_digest
from mirror.stats import Stats
from mirror.traffic import Traffic
from mirror.transfer.inflight import InflightDownloads
from mirror.upstream import Upstream, anonymous_quota_warning
from mirror.upstream.probe import probe, summary
from mirror.warmer import keep_warm

if TYPE_CHECKING:  # a fleet's parts are imported only when [fleet] is set: redis alone weighs ~8 MiB
    from mirror.fleet.coordinator import Fleet
    from mirror.fleet.peers import FleetSource

log = logging.getLogger(__name__)


def links_matter(config: Config) -> bool:
    """Whether the cache may hold what not every client may read: then a digest is served under a
    repository only once linked to it. With anonymous upstreams and no rules, everything is public."""
    return bool(config.auth.rules) or any(
        upstream.username is not None or upstream.credentials or any(m.username for m in upstream.mirrors)
        for upstream in config.upstreams.values()
    )


def fetches_ahead(config: Config) -> bool:
    """`[cache] fetch_ahead`, alone. Not in a fleet: behind a balancer that hashes blobs on their
    digest each blob has one replica, and fetching ahead would keep a second copy of every blob of
    an image on the replica that served its manifest."""
    return config.cache.fetch_ahead and config.fleet is None


def signature_policy(config: Config) -> SignaturePolicy | None:
    """[signatures]: the policy to enforce (or audit), or None."""
    signatures = config.signatures
    return None if signatures is None else SignaturePolicy(signatures.policy, signatures.mode)


class Mirror:
    """The cache, the upstreams and the proxy between them, with their counters."""

    def __init__(self, config: Config) -> None:
        """Open the cache (a directory scan: call before serving) and build the parts."""
        self.config = config
        self.started = config  # the config this process started with: what restart-only keys are
        self.config_hash = config_hash(config)
        self.stats = Stats()
        self.traffic = Traffic()
        self.directory = CacheDirectory.open(config.cache.directory)  # format checked, upgraded if old
        keep = config.cache.inventory_max_age
        self.store = BlobStore(self.directory.layout, config.cache.max_size, self.stats, inventory_max_age=keep)
        self.store.sweep()  # the index of blobs is built in the background (start): serving needs none
        self.manifests = ManifestCache(self.directory.metadata, self.store)
        self.local_tags = LocalTagStore(self.directory.metadata)
        self.inflight = InflightDownloads(self.store, self.stats)
        self.fleet: Fleet | None = None
        self.tags: TagStore = self.local_tags
        coordination: Coordination = Alone()
        if config.fleet is not None:
            coordination = self._join_fleet(config.fleet)
        self.kept_lists = KeptLists(self.directory.metadata)
        self.journal = TagJournal(self.directory.metadata)
        self.links = BlobLinks(self.directory.metadata)
        self.index_ready = False
        self.proxy = Proxy(
            store=self.store,
            manifests=self.manifests,
            tags=self.tags,
            journal=self.journal,
            kept_lists=self.kept_lists,
            links=self.links,
            inflight=self.inflight,
            stats=self.stats,
            tag_ttl=config.cache.tag_ttl,
            negative_ttl=config.cache.negative_ttl,
            enforce_links=links_matter(config),
            coordination=coordination,
            source_for=self._blob_source,
            signatures=signature_policy(config),
            verdicts=VerdictRecords(self.directory.metadata),
            fetch_ahead=fetches_ahead(config),
        )
        self.upstreams = {
            name: Upstream(upstream, self.stats, config.proxy_env, offline=config.server.offline)
            for name, upstream in config.upstreams.items()
        }
        forget_fetching(self.directory)  # an earlier process's fetches of pins ended with it
        self.pins = PinKeeper(self.directory, self.store, self.proxy, self.upstream_for, lambda: self.config)
        self._tasks: list[asyncio.Task[None]] = []
        for upstream in self.upstreams.values():
            mode = "offline: never asked, the cache answers" if upstream.offline else upstream.route.describe()
            log.info("upstream %s at %s, %s", upstream.name, upstream.url, mode)
        if config.server.offline:
            log.info("offline ([server] offline or --offline): no upstream is asked; the cache answers")
        for upstream_config in config.upstreams.values():
            warning = anonymous_quota_warning(upstream_config, offline=config.server.offline)
            if warning is not None:
                log.warning("%s", warning)

    def _join_fleet(self, config: FleetConfig) -> Coordination:
        """A replica of a fleet: tags, coordination and blobs through Redis and the other replicas."""
        from mirror.fleet.coordination import FleetCoordination
        from mirror.fleet.coordinator import Fleet
        from mirror.fleet.tags import FleetTagStore

        self.fleet = fleet = Fleet(config, self._member_report)
        self.tags = FleetTagStore(self.local_tags, fleet)
        self.inflight.on_finished = fleet.finished_digest
        self.store.on_removed = self._dropped
        self._peers = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=2.0), trust_env=False)
        self._sources: dict[str, FleetSource] = {}
        return FleetCoordination(fleet)

    async def start(self) -> None:
        """Start the background work: first the index of what is cached, then making room if max_size shrank."""
        background: list[Coroutine[Any, Any, None]] = [
            self._index(),
            self.traffic.sample_forever(self.stats),
            self._check_upstreams(),
        ]
        if self.config.cache.max_age is not None or self.config.cache.inventory_max_age is not None:
            background.append(self._expire_forever())
        background += [keep_warm(self.proxy, self.upstream_for, entry) for entry in self.config.prefetch]
        if self.fleet is not None:
            background.append(self.fleet.heartbeat_forever(self._held))
        self._tasks = [asyncio.create_task(work) for work in background]
        self.pins.keep()  # [[pin]] images not cached are fetched

    async def _check_upstreams(self) -> None:
        """Once at start-up, what `mirror doctor` would say of each upstream's network path (DNS, TCP,
        TLS; nothing the registry logs): a set-up that cannot work is said before the first client."""
        for config in self.config.upstreams.values():
            result = await probe(config, self.config.proxy_env, offline=self.config.server.offline, ask=False)
            ok, line = summary(result)
            log.log(logging.INFO if ok else logging.WARNING, "upstream %s at start-up: %s", config.name, line)

    def _blob_source(self, upstream: Upstream) -> BlobSource:
        """Where an upstream's missing blobs come from: in a fleet, other replicas first."""
        if self.fleet is None:
            return upstream
        source = self._sources.get(upstream.name)
        if source is None:
            from mirror.fleet.peers import FleetSource

            counters = self.stats.upstream("fleet replicas")
            source = self._sources[upstream.name] = FleetSource(upstream, self.fleet, self._peers, counters)
        return source

    def _held(self) -> list[str]:
        """What this replica holds, for the fleet (once the start-up scan has listed it)."""
        return self.store.digests() if self.store.scanned else []

    def _dropped(self, digests: list[Digest]) -> None:
        if self.fleet is not None:
            task = asyncio.get_running_loop().create_task(self.fleet.dropped(str(d) for d in digests))
            self._tasks.append(task)
            self._tasks = [t for t in self._tasks if not t.done()]

    def _member_report(self) -> dict[str, Any]:
        hits = self.stats.manifest_hits + self.stats.blob_hits + self.stats.coalesced
        misses = self.stats.manifest_misses + self.stats.blob_misses
        return {
            "blobs": self.store.count,
            "bytes": self.store.total_bytes,
            "max_size": self.config.cache.max_size,
            "hit_ratio": round(hits / (hits + misses), 4) if hits + misses else None,
            "requests": self.stats.requests,
        }

    async def _index(self) -> None:
        await anyio.to_thread.run_sync(self.manifests.load_inventory)
        await self.refresh_pins()
        await self.store.scan()
        if self.fleet is not None:
            await self.fleet.register(self.store.digests())  # a replica that rejoins says what it holds
        await self.store.evict_to_fit()
        self.index_ready = True  # indexed, and max_size enforced on what a restart found

    async def refresh_pins(self) -> None:
        """What is never evicted, read again (the pins in the index, `[[pin]]`'s)."""
        await self.pins.refresh()

    async def keep_pins(self) -> None:
        """After a reload: `[[pin]]` images fetched when not cached, removed ones let go."""
        self.pins.keep()
        await self.pins.refresh()

    async def pin(
        self, targets: list[Target], *, unpin: bool = False, fetch: bool = False, platforms: tuple[str, ...] | None
    ) -> list[str]:
        """`mirror pin` and `mirror unpin` through the server; the names pinned or unpinned. With
        `fetch`, what is not cached is fetched first (an index's `platforms`, None: all)."""
        if unpin:
            return await self.pins.unpin(targets)
        if fetch:
            return await self.pins.pin(targets, platforms)
        return await self.pins.pin_cached(targets, platforms)

    async def close(self) -> None:
        await self.pins.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.inflight.close()
        if self.fleet is not None:
            await self.fleet.close()
            await self._peers.aclose()
        for upstream in self.upstreams.values():
            await upstream.aclose()
        self.directory.close()

    def upstream_for(self, registry: str | None) -> Upstream:
        """The upstream of a registry host, or the default one for None."""
        upstream = self.upstreams.get(registry or self.config.server.default_upstream)
        if upstream is None:
            raise NameUnknown(f"registry {str(registry)[:100]!r} is not mirrored here")
        return upstream

    def resolve_upstream(self, path_name: str, ns: str | None) -> tuple[Upstream, str]:
        """Pick the upstream by `?ns=`, else by a leading registry host, else the default."""
        if ns is not None:
            return self.upstream_for(ns), path_name
        first, _, rest = path_name.partition("/")
        if rest and is_registry_host(first):
            return self.upstream_for(first), rest
        return self.upstream_for(None), path_name

    def apply(self, config: Config) -> list[str]:
        """A reloaded config (SIGHUP): apply what can change in place; the keys that need a restart.

        In place: the upstreams' allow, deny, block, keep_deleted_tags, logins and offline;
        tag_ttl; max_size; whether links are enforced. Access control and TLS are the app's.
        """
        # Against what runs (a restart key changed and then set back needs no restart), as declared.
        restart = restart_keys(self.started, config)
        for name, upstream in self.upstreams.items():
            if name in config.upstreams:
                restart += upstream.reconfigure(config.upstreams[name], offline=config.server.offline)
        self.proxy.reconfigure(
            tag_ttl=config.cache.tag_ttl,
            enforce_links=links_matter(config),
            signatures=signature_policy(config),
            fetch_ahead=fetches_ahead(config),
        )
        self.store.max_size = config.cache.max_size
        self.config = config
        self.config_hash = config_hash(config)
        return restart

    async def accept_tag(self, upstream: str, repository: str, tag: str) -> str | None:
        """`mirror tag accept`: the tag's answer becomes the upstream's newest digest in its journal
        (held: from now on; else at the next pull), fleet-wide; None when the tag was never seen."""
        history = await self.journal.history(upstream, repository, tag)
        if not history:
            return None
        newest = max(history, key=lambda sighting: sighting.last_seen)
        manifest = await self.manifests.get(parse_digest(newest.digest))
        entries = await self.tags.tag_entries(upstream, repository, tag, reload=True)
        await self.tags.forget_tag(upstream, repository, tag)
        if manifest is not None:
            now = time.time()
            for key, entry in entries.items():
                if entry.media_type == manifest.media_type:  # the same kind of answer; others are asked again
                    await self.tags.set_tag(
                        upstream, repository, tag, key, TagEntry(newest.digest, entry.media_type, now)
                    )
        log.info("mirror tag accept: %s/%s:%s is %s from now on", upstream, repository, tag, newest.digest)
        return newest.digest

    async def remove(self, targets: list[Target], with_blobs: bool, *, force: bool = False) -> Removal:
        """`mirror rm` through the server: out of the index and the files, and out of memory, so
        that nothing removed is answered again without a fetch (which `block` can refuse).
        A pinned image's content is refused (PinnedError) unless `force`."""
        removal = await anyio.to_thread.run_sync(plan_removal, self.directory, targets, with_blobs)
        if not force:
            await anyio.to_thread.run_sync(refuse_pinned, self.directory, removal)
        await anyio.to_thread.run_sync(apply_to_index, self.directory.metadata, removal)
        for key in removal.tags:
            self.tags.forget_in_memory(*key)
        for digest in removal.manifests:
            self.manifests.forget_in_memory(digest)
        for digest in removal.manifests | removal.blobs:
            self.links.forget(digest)
        await self.store.remove([parse_digest(d) for d in removal.manifests | removal.blobs])
        log.info("removed %s", removal.summary())
        return removal

    def snapshot(self) -> dict[str, object]:
        snapshot = self._snapshot()
        upstreams = snapshot["upstreams"]
        assert isinstance(upstreams, dict)
        for name, upstream in self.upstreams.items():
            health = upstream.health
            upstreams.setdefault(name, {})["health"] = {
                "answering": health.consecutive_failures == 0,
                "offline": upstream.offline,
                "consecutive_failures": health.consecutive_failures,
                "last_success": health.last_success,
                "last_error": health.last_error,
                "last_error_message": health.last_error_message,  # what failed, and what fixes it
                "setting": health.last_error_setting,
            }
        if self.fleet is not None:
            snapshot["fleet"] = {
                "peer_url": self.fleet.me,
                "redis": "up" if self.fleet.up else "down: on its own",
                "last_error": self.fleet.last_error,
                "redis_failures": self.fleet.failures,
            }
        return snapshot

    def _snapshot(self) -> dict[str, object]:
        return self.stats.snapshot(
            inflight=len(self.inflight),
            cached_blobs=self.store.count,
            cached_bytes=self.store.total_bytes,
            max_size=self.config.cache.max_size,
            index_ready=self.index_ready,
        )

    def _manifest_used_within(self, age: float) -> Callable[[str], bool]:
        def used(digest: str) -> bool:
            try:
                return self.store.used_since(parse_digest(digest), time.time() - age)
            except RegistryError:
                return False

        return used

    async def _expire_forever(self) -> None:
        """Drop content nobody pulled for max_age, and tags nobody pulled for tag_max_age, a few times per age."""
        ages = [age for age in (self.config.cache.max_age, self.config.cache.inventory_max_age) if age is not None]
        while True:
            if self.config.cache.max_age is not None:
                await self.store.expire(self.config.cache.max_age)
            if (age := self.config.cache.inventory_max_age) is not None:
                await self.tags.forget_tags_older_than(age, self._manifest_used_within(age))
            await asyncio.sleep(min(max(min(ages) / 10, 1.0), 3600.0))
