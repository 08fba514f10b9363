"""A replica's link to the fleet through Redis: membership, who holds which blob, download leases.

Every key and what it holds: `mirror.fleet.keys`.

A replica is named by its `peer_url`, so one that restarts keeps its name and what it holds.
When Redis fails, every replica goes on alone (single-flight within itself) and says so in
its health; when Redis is back, it registers again, and what it holds with it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from mirror.config import FleetConfig
from mirror.fleet import keys
from mirror.fleet.network import PeerNetwork, default_peers

log = logging.getLogger(__name__)

REGISTER_BATCH = 5_000

# Deletes a key only if it still holds our value: a lease that expired and was taken by
# another replica is not ours to release.
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
_TAKE_OVER = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then redis.call('set', KEYS[1], ARGV[2], 'PX', ARGV[3]) return 1 "
    "else return 0 end"
)
# Drops members whose record expired, each only if it still has none: a replica that beat
# again since it was read stays.
_PRUNE = (
    "local gone = 0 for i, peer in ipairs(ARGV) do "
    "if redis.call('exists', KEYS[1] .. peer) == 0 then gone = gone + redis.call('srem', KEYS[2], peer) end "
    "end return gone"
)
_RENEW = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
)


class Fleet:
    """This replica in the fleet. Every method degrades to "on our own" while Redis fails."""

    def __init__(self, config: FleetConfig, report: Callable[[], dict[str, Any]]) -> None:
        self.config = config
        self.me = config.peer_url
        self.secret = config.secret
        self.network = PeerNetwork(config.peers or default_peers(config.peer_url))
        self._report = report  # this replica's numbers for its member record
        self._redis = aioredis.Redis.from_url(
            config.redis,
            socket_timeout=1.0,
            socket_connect_timeout=1.0,
            decode_responses=True,
            # A pooled connection to a Redis that restarted fails once, on its first use: it is
            # opened again and the command sent once more. (from_url sets no retry of its own; a
            # slow Redis, a timeout, is not retried: the replica goes on alone at once.)
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        self.up = False  # Redis answered the last time it was asked
        self.last_error: str | None = None
        self.failures = 0  # Redis calls that failed, each answered without Redis
        self.started = time.time()
        self._leases: dict[str, asyncio.Task[None]] = {}  # digest -> its renewal
        self._held: Callable[[], Iterable[str]] = lambda: ()
        self._was_down = True  # register what is held on the first contact, and after every outage

    # Plumbing

    async def _call(self, what: str, work: Callable[[], Awaitable[Any]], fallback: Any) -> Any:
        """Redis's answer, or `fallback` when Redis fails (then this replica is on its own)."""
        try:
            result = await work()
        except (RedisError, OSError) as exc:
            if self.up or self.last_error is None:
                log.warning("fleet: Redis failed (%s: %s); going on alone until it is back", what, exc)
            self.up = False
            self._was_down = True
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"[:300]
            return fallback
        if not self.up:
            log.info("fleet: Redis answers; coordinating with the other replicas")
        self.up = True
        return result

    async def close(self) -> None:
        for task in self._leases.values():
            task.cancel()

        async def leave() -> None:
            await self._redis.delete(keys.member(self.me))
            await self._redis.srem(keys.MEMBERS, self.me)

        await self._call("leaving", leave, None)
        await self._redis.aclose()

    # Membership

    async def heartbeat_forever(self, held: Callable[[], Iterable[str]]) -> None:
        """Register every heartbeat (the record expires after three missed); after an outage,
        or at the first contact, register every blob held."""
        self._held = held
        while True:
            await self.beat()
            await asyncio.sleep(self.config.heartbeat)

    async def beat(self) -> None:
        record = {"peer_url": self.me, "started": self.started, "seen": time.time(), **self._report()}
        ttl = int(self.config.heartbeat * 3000)

        async def beat() -> None:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.set(keys.member(self.me), json.dumps(record), px=ttl)
                pipe.sadd(keys.MEMBERS, self.me)
                await pipe.execute()

        await self._call("heartbeat", beat, None)
        if self.up and self._was_down:
            self._was_down = False
            count = await self.register(self._held())
            log.info("fleet: joined as %s, holding %d blobs", self.me, count)

    async def members(self) -> list[dict[str, Any]]:
        """The live replicas' records (this one included).

        From the set of those that joined, not a SCAN: that would walk every holder set too.
        A member whose record expired (three missed heartbeats) has stopped: it leaves the set."""

        async def read() -> list[dict[str, Any]]:
            joined = sorted(str(peer) for peer in await self._redis.smembers(keys.MEMBERS))  # decoded
            values = await self._redis.mget([keys.member(peer) for peer in joined]) if joined else []
            if gone := [peer for peer, value in zip(joined, values, strict=True) if not value]:
                await self._redis.eval(_PRUNE, 2, keys.MEMBER, keys.MEMBERS, *gone)
            return [json.loads(value) for value in values if value]

        members: list[dict[str, Any]] = await self._call("members", read, [])
        return members

    async def alive(self) -> set[str]:
        """The live replicas this one will ask: Redis's word, within [fleet] peers."""
        urls = {member.get("peer_url") for member in await self.members()}
        return {url for url in urls if isinstance(url, str) and (url == self.me or self.network.accepts(url))}

    # Holders

    async def register(self, digests: Iterable[str]) -> int:
        """Say this replica holds these blobs (in batches: a rejoining replica may hold a million)."""
        count = 0
        batch: list[str] = []
        for digest in digests:
            batch.append(digest)
            if len(batch) >= REGISTER_BATCH:
                count += await self._add(batch)
                batch = []
        if batch:
            count += await self._add(batch)
        return count

    async def _add(self, digests: list[str]) -> int:
        async def add() -> int:
            async with self._redis.pipeline(transaction=False) as pipe:
                for digest in digests:
                    pipe.sadd(keys.holders(digest), self.me)
                await pipe.execute()
            return len(digests)

        added: int = await self._call("holders", add, 0)
        return added

    async def dropped(self, digests: Iterable[str]) -> None:
        """This replica no longer holds these (evicted, removed)."""
        digests = list(digests)
        if not digests:
            return

        async def remove() -> None:
            async with self._redis.pipeline(transaction=False) as pipe:
                for digest in digests:
                    pipe.srem(keys.holders(digest), self.me)
                await pipe.execute()

        await self._call("holders", remove, None)

    async def holders(self, digest: str) -> list[str]:
        """The other live replicas that hold a blob."""
        listed: set[str] = await self._call("holders", lambda: self._redis.smembers(keys.holders(digest)), set())
        if not listed:
            return []
        alive = await self.alive()
        return sorted(peer for peer in listed if peer != self.me and peer in alive)

    # Leases

    async def lease(self, digest: str, failed: str | None = None) -> str | None:
        """Take the lease on downloading a blob: None when this replica has it (or Redis is down:
        then every replica is on its own); else the peer URL of the live replica that has it.

        A lease whose replica is gone (killed mid-download), or `failed` us just now, is taken
        over at once, by one replica, rather than waited out: the others stream from that one.
        """
        key = keys.lease(digest)
        value = json.dumps({"peer_url": self.me, "since": time.time()})
        ttl = int(self.config.lease_ttl * 1000)
        for _ in range(3):
            if await self._call("lease", lambda: self._redis.set(key, value, nx=True, px=ttl), True):
                self._renewing(digest, key, value, ttl)
                return None
            current = await self._call("lease", lambda: self._redis.get(key), None)
            owner = _owner(current)
            if current is None:
                continue  # released meanwhile: try again
            if owner == self.me:
                return None
            if owner is not None and owner != failed and owner in await self.alive():
                return owner
            took = await self._call("lease", partial(self._redis.eval, _TAKE_OVER, 1, key, current, value, str(ttl)), 1)
            if took:
                log.info("fleet: took over the download of %s from %s, which is gone", digest, owner)
                self._renewing(digest, key, value, ttl)
                return None
        return None

    def _renewing(self, digest: str, key: str, value: str, ttl: int) -> None:
        if self.up:
            self._leases[digest] = asyncio.create_task(self._renew(key, value, ttl), name=f"lease {digest}")

    async def _renew(self, key: str, value: str, ttl: int) -> None:
        while True:
            await asyncio.sleep(self.config.lease_ttl / 3)
            await self._call("lease", lambda: self._redis.eval(_RENEW, 1, key, value, str(ttl)), 0)

    async def finished_digest(self, digest: Any, held: bool) -> None:
        """InflightDownloads' hook: a download of `digest` ended, committed or not."""
        await self.finished(str(digest), held)

    async def finished(self, digest: str, held: bool) -> None:
        """A download ended: say we hold the blob (if it was committed), and let the lease go."""
        if held:
            await self._add([digest])
        await self.release(digest)

    async def release(self, digest: str) -> None:
        """Let our lease on a blob go (if we have one): nobody waits for it to expire."""
        renewal = self._leases.pop(digest, None)
        if renewal is None:
            return
        renewal.cancel()
        key = keys.lease(digest)

        async def release() -> Any:
            current = await self._redis.get(key)
            if isinstance(current, str) and _owner(current) == self.me:
                return await self._redis.eval(_RELEASE, 1, key, current)
            return 0

        await self._call("lease", release, 0)

    # Plain values, by their full key (`mirror.fleet.keys`)

    async def get_hash(self, key: str) -> dict[str, str] | None:
        """A hash, or None when Redis cannot say (then the caller uses what it has)."""
        result: dict[str, str] | None = await self._call("tags", lambda: self._redis.hgetall(key), None)
        return result

    async def set_hash_field(self, key: str, field: str, value: str) -> None:
        await self._call("tags", lambda: self._redis.hset(key, field, value), None)

    async def set_once(self, key: str, value: str, days: float) -> None:
        await self._call("shared", lambda: self._redis.set(key, value, nx=True, ex=int(days * 86400)), None)

    async def get(self, key: str) -> str | None:
        value = await self._call("shared", lambda: self._redis.get(key), None)
        return value if isinstance(value, str) else None

    async def delete(self, key: str) -> None:
        await self._call("tags", lambda: self._redis.delete(key), None)

    async def claim(self, key: str, seconds: float) -> bool:
        """One replica at a time for `key` (a tag's revalidation), for at most `seconds`; True when
        this replica has it, or Redis cannot say."""
        ttl = max(1, int(seconds * 1000))  # PX 0 is an error to Redis: tag_ttl = 0 still claims, for 1 ms
        claimed = await self._call("claim", lambda: self._redis.set(key, self.me, nx=True, px=ttl), True)
        return bool(claimed)


def _owner(value: str | None) -> str | None:
    try:
        owner = json.loads(value)["peer_url"] if value else None
    except (ValueError, KeyError, TypeError):
        return None
    return owner if isinstance(owner, str) else None
