"""The user's pins as the server holds them: what is never evicted, and pins fetched when they are
not cached (`mirror pin`, `[[pin]]` at start-up and on reload), through the proxy as a client's
pull is (the upstream's policy, the signature policy, single-flight, digest checks), in the
background so that clients' downloads go first."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import anyio.to_thread

from mirror.cache.blobs import BlobStore
from mirror.cache.directory import CacheDirectory
from mirror.cache.pins import (
    NotCached,
    Pin,
    PinError,
    check_budget,
    image_digests,
    load_pins,
    mark_fetching,
    pin_name,
    record,
    unmark_fetching,
)
from mirror.cache.pins import pin as pin_images
from mirror.cache.pins import unpin as unpin_images
from mirror.cache.removal import RemovalError, Target, parse_target
from mirror.config import Config, PinConfig
from mirror.proxy import Proxy
from mirror.registry.errors import RegistryError
from mirror.registry.reference import parse_digest
from mirror.upstream import Upstream
from mirror.warmer import ResolvedImage, fetch, resolve

log = logging.getLogger(__name__)


class PinKeeper:
    """The pins in the index and `[[pin]]`'s, kept out of eviction; the ones not cached, fetched."""

    def __init__(
        self,
        directory: CacheDirectory,
        store: BlobStore,
        proxy: Proxy,
        upstream_for: Callable[[str | None], Upstream],
        config: Callable[[], Config],
    ) -> None:
        self.directory = directory
        self.store = store
        self.proxy = proxy
        self.upstream_for = upstream_for
        self.config = config  # the config in force (a reload changes it)
        self.pins: list[Pin] = []  # what is never evicted
        self.configured: dict[PinConfig, Pin] = {}  # [[pin]] entries, as their last fetch found them
        self.fetching: dict[str, dict[str, int]] = {}  # pin name -> its digests, while they are fetched
        self._configured_fetches: dict[PinConfig, asyncio.Task[None]] = {}
        self._fetches: set[asyncio.Task[list[str]]] = set()  # `mirror pin`'s, finished if the client goes

    @property
    def fetching_digests(self) -> frozenset[str]:
        return frozenset(digest for digests in self.fetching.values() for digest in digests)

    async def refresh(self) -> None:
        """What is never evicted: the pins in the index, `[[pin]]` images (as fetched, else as cached),
        and the digests of pins being fetched."""
        pins = await anyio.to_thread.run_sync(load_pins, self.directory)
        for entry in self.config().pins:
            made = self.configured.get(entry)
            if made is None:
                try:
                    target = parse_target(entry.image)
                    digests = await anyio.to_thread.run_sync(image_digests, self.directory, target)
                except (PinError, RemovalError):
                    continue  # not cached (yet): its fetch says why
                made = Pin(pin_name(target), digests)
            pins.append(made)
        try:
            check_budget(pins, self.config().cache.max_size)
        except PinError as exc:
            log.error("%s; pins are kept anyway, and max_size is exceeded", exc)
        self.pins = pins
        self.store.pinned = frozenset(digest for pin in pins for digest in pin.digests) | self.fetching_digests

    def keep(self) -> None:
        """At start-up and on reload: fetch each `[[pin]]` image (what is cached is not fetched again),
        and let go of entries no longer in the config."""
        entries = self.config().pins
        for entry in list(self._configured_fetches):
            if entry not in entries:
                self._configured_fetches.pop(entry).cancel()
        self.configured = {entry: pin for entry, pin in self.configured.items() if entry in entries}
        for entry in entries:
            running = self._configured_fetches.get(entry)
            if running is None or running.done():
                self._configured_fetches[entry] = asyncio.create_task(self._keep_configured(entry))

    async def _keep_configured(self, entry: PinConfig) -> None:
        try:
            target = parse_target(entry.image)
            if target.upstream is None:
                raise RemovalError("pin images by name, not bare digests")
            image = await self._resolve(target, entry.platforms)
            fetched = await self._fetch(target, image)
            digests = await self._with_cached(target, image)
            self.configured[entry] = Pin(pin_name(target), digests)
            log.info("[[pin]] %s: kept (%d blobs fetched)", entry.image, fetched)
        except (RegistryError, PinError, RemovalError) as exc:
            log.warning("[[pin]] %s: %s", entry.image, exc)
        finally:
            await self.refresh()

    async def pin(self, targets: list[Target], platforms: tuple[str, ...] | None) -> list[str]:
        """`mirror pin` through the server: each image resolved (an index's `platforms`, None: all),
        the budget checked, what is not cached fetched, then recorded; the names pinned. Refused
        whole, before anything is fetched, when one cannot be resolved or all pins would exceed
        max_size; nothing is recorded if a fetch fails."""
        resolved = [(target, await self._resolve(target, platforms)) for target in targets]
        await anyio.to_thread.run_sync(self._check_budget, [Pin(pin_name(t), i.digests) for t, i in resolved])
        task = asyncio.create_task(self._fetch_and_record(resolved))
        self._fetches.add(task)
        task.add_done_callback(self._fetches.discard)
        return await asyncio.shield(task)  # a client that goes away does not stop it

    async def pin_cached(self, targets: list[Target], platforms: tuple[str, ...] | None) -> list[str]:
        """Pin the images as cached (`mirror import`'s, and `POST /api/pin` without `fetch`); with
        `platforms`, an index's children of those, each of which must be cached."""
        others = list(self.configured.values())
        max_size = self.config().cache.max_size
        made = await anyio.to_thread.run_sync(pin_images, self.directory, targets, max_size, others, platforms)
        await self.refresh()
        return [pin.name for pin in made]

    async def unpin(self, targets: list[Target]) -> list[str]:
        done = await anyio.to_thread.run_sync(unpin_images, self.directory, targets)
        await self.refresh()
        return done

    def _check_budget(self, made: list[Pin]) -> None:
        names = {pin.name for pin in made}
        kept = [pin for pin in load_pins(self.directory) if pin.name not in names]
        check_budget([*kept, *self.configured.values(), *made], self.config().cache.max_size)

    async def _fetch_and_record(self, resolved: list[tuple[Target, ResolvedImage]]) -> list[str]:
        try:
            for target, image in resolved:
                await self._fetch(target, image)
            made = [
                (target, Pin(pin_name(target), await self._with_cached(target, image))) for target, image in resolved
            ]
            others = list(self.configured.values())
            await anyio.to_thread.run_sync(record, self.directory, made, self.config().cache.max_size, others)
            return [pin.name for _, pin in made]
        finally:
            await self.refresh()

    async def _resolve(self, target: Target, platforms: tuple[str, ...] | None) -> ResolvedImage:
        """The image's manifests through the proxy; an error names the image."""
        assert target.upstream is not None and target.repository is not None
        try:
            upstream = self.upstream_for(target.upstream)
            return await resolve(self.proxy, upstream, target.repository, target.reference, platforms)
        except RegistryError as exc:
            raise RegistryError(f"{target.text}: {exc.message}", status=exc.status, code=exc.code) from exc

    async def _fetch(self, target: Target, image: ResolvedImage) -> int:
        """The image's blobs that are not cached, fetched while they are kept from eviction and
        `mirror ls` says so; blobs fetched."""
        name = pin_name(target)
        self.fetching[name] = image.digests
        self.store.pinned = self.store.pinned | frozenset(image.digests)
        await anyio.to_thread.run_sync(mark_fetching, self.directory, target, image.digests)
        try:
            fetched = await fetch(self.proxy, image)
            missing = [d for d in image.blobs if await self.store.stat(parse_digest(d)) is None]
            if missing:
                raise PinError(f"{target.text}: {len(missing)} blob(s) could not be cached ({missing[0]} …)")
            return fetched
        finally:
            self.fetching.pop(name, None)
            await anyio.to_thread.run_sync(unmark_fetching, self.directory, target)

    async def _with_cached(self, target: Target, image: ResolvedImage) -> dict[str, int]:
        """What the pin keeps: what was fetched, and whatever else of the image is cached (another
        platform of an index, pulled before)."""
        try:
            cached = await anyio.to_thread.run_sync(image_digests, self.directory, target)
        except NotCached:
            cached = {}
        return {**cached, **image.digests}

    async def close(self) -> None:
        tasks = [*self._configured_fetches.values(), *self._fetches]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
