"""Shard ownership: which replica of a service processes which shard of its streams.

Each shard of a service (the agent's inbox shards, the notifier's outbox shards) is held by at
most one live replica at a time, through a lease in Redis (`keys.shard_lease`: the owner's id,
with a TTL) that the owner renews every third of the TTL. So one user's messages are handled by
one replica at a time, in order, across any number of replicas.

- A replica registers itself (`keys.replicas`, scored by when its registration expires) and
  aims at ceil(shards / live replicas) shards: it takes free shards up to that and gives back
  what it holds beyond it, so replicas that come and go rebalance within a few ticks.
- Taking a shard: its lease is free, or already ours (a restart of the same replica id takes
  its shards back at once instead of waiting for the TTL).
- Giving one back: the shard's work is stopped first (`on_released`, which drains it), then
  the lease is deleted, so the next owner never starts while we still work on it.
- Losing one: a lease we could not renew for most of its TTL (Redis away, a stalled process)
  is assumed lost, and its work is stopped at once, before anyone else can take it over.
- A replica killed with -9 simply stops renewing: its leases expire after the TTL and its
  shards are taken over by the others, with whatever it left pending.

The invariant rests on the clocks of Redis (TTL) and of the owner (the local deadline); a
process stalled for longer than the TTL (SIGSTOP, a long GC pause) may overlap with its
successor until it notices. The work itself is idempotent (stored replies, idempotency keys),
so an overlap can reorder but never duplicate what a user receives (docs/adr/0007).
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import time
import zlib
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError

from wacoder import keys
from wacoder.redis import Store
from wacoder.settings import Settings

log = logging.getLogger("wacoder.leases")

ShardCallback = Callable[[int], Awaitable[None]]

# KEYS[1] the lease. ARGV: replica id, ttl ms. Takes a free lease or renews our own.
_TAKE = """
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
# KEYS[1] the lease. ARGV: replica id, ttl ms. Renews the lease only while it is ours.
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
# KEYS[1] the lease. ARGV: replica id. Gives the lease back only if it is ours.
_GIVE_BACK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def replica_name(settings: Settings, listen_addr: str) -> str:
    """This process among its service's replicas: REPLICA_ID, else the hostname (the pod name in
    Kubernetes) plus the gRPC port. Stable across restarts of the same replica, so it takes its
    own shards back at once; distinct between replicas on one machine (they cannot share a
    port). Two live processes must never share one."""
    if settings.replica_id:
        return settings.replica_id
    return f"{socket.gethostname()}:{listen_addr.rpartition(':')[2]}"


class ShardLeases:
    def __init__(
        self,
        redis: Store,
        *,
        service: str,
        replica: str,
        shards: int,
        ttl_ms: int,
        on_acquired: ShardCallback,
        on_released: ShardCallback,
    ) -> None:
        self.redis = redis
        self.service = service
        self.replica = replica
        self.shards = shards
        self.ttl_ms = ttl_ms
        self.on_acquired = on_acquired
        self.on_released = on_released
        # Shard -> local deadline (monotonic) until which the lease is surely ours.
        self._held: dict[int, float] = {}
        self._take = redis.register_script(_TAKE)
        self._renew = redis.register_script(_RENEW)
        self._give_back = redis.register_script(_GIVE_BACK)
        self._stopping = asyncio.Event()
        # Each replica tries the free shards in its own order, so that replicas starting
        # together do not all race for shard 0 first.
        start = zlib.crc32(replica.encode()) % shards
        self._preference = [(start + i) % shards for i in range(shards)]

    @property
    def owned(self) -> frozenset[int]:
        return frozenset(self._held)

    @property
    def tick_s(self) -> float:
        return self.ttl_ms / 3000

    async def run(self) -> None:
        """Holds and rebalances shards until `stop()`; survives Redis going away."""
        while not self._stopping.is_set():
            try:
                await self.tick()
            except (RedisError, OSError) as error:
                log.warning("shard leases: redis unavailable", extra={"error": str(error)})
                await self._drop_expired()
            except Exception:
                log.exception("shard leases: tick failed")
            try:
                await asyncio.wait_for(self._stopping.wait(), timeout=self.tick_s)
            except TimeoutError:
                pass

    async def tick(self) -> None:
        """One round: register, renew, then give back or take shards towards the fair share."""
        live = await self._register()
        await self._renew_held()
        target = math.ceil(self.shards / max(live, 1))
        surplus = len(self._held) - target
        if surplus > 0:
            for shard in sorted(self._held, reverse=True)[:surplus]:
                await self._release(shard)
        elif surplus < 0:
            for shard in self._preference:
                if len(self._held) >= target or self._stopping.is_set():
                    break
                if shard not in self._held and await self._take(
                    keys=[keys.shard_lease(self.service, shard)], args=[self.replica, self.ttl_ms]
                ):
                    await self._acquired(shard)

    async def stop(self) -> None:
        """Stops each shard's work and gives its lease back, so peers take over at once."""
        self._stopping.set()
        for shard in sorted(self._held):
            await self._release(shard)
        try:
            await self.redis.zrem(keys.replicas(self.service), self.replica)
        except (RedisError, OSError):
            pass  # the registration expires on its own

    async def _register(self) -> int:
        """Registers this replica; returns how many replicas are alive (ourselves included)."""
        now_ms = int(time.time() * 1000)
        registry = keys.replicas(self.service)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(registry, {self.replica: now_ms + self.ttl_ms})
            pipe.zremrangebyscore(registry, "-inf", now_ms)
            pipe.zcard(registry)
            pipe.expire(registry, max(1, self.ttl_ms // 1000) * 10)
            _, _, live, _ = await pipe.execute()
        return int(live)

    async def _renew_held(self) -> None:
        for shard in list(self._held):
            began = time.monotonic()
            if await self._renew(
                keys=[keys.shard_lease(self.service, shard)], args=[self.replica, self.ttl_ms]
            ):
                self._held[shard] = began + self.ttl_ms / 1000 * 0.8
            else:
                log.warning("shard lease lost", extra={"service": self.service, "shard": shard})
                self._held.pop(shard, None)
                await self.on_released(shard)

    async def _drop_expired(self) -> None:
        """Without Redis we cannot renew: stop the work of leases that may have expired."""
        now = time.monotonic()
        for shard, deadline in list(self._held.items()):
            if now >= deadline:
                log.warning("shard lease not renewed in time; stopping its work", extra={"shard": shard})
                self._held.pop(shard, None)
                await self.on_released(shard)

    async def _acquired(self, shard: int) -> None:
        self._held[shard] = time.monotonic() + self.ttl_ms / 1000 * 0.8
        log.info("shard acquired", extra={"service": self.service, "shard": shard, "replica": self.replica})
        await self.on_acquired(shard)

    async def _release(self, shard: int) -> None:
        self._held.pop(shard, None)
        await self.on_released(shard)
        try:
            await self._give_back(keys=[keys.shard_lease(self.service, shard)], args=[self.replica])
        except (RedisError, OSError):
            pass  # it expires on its own
        log.info("shard released", extra={"service": self.service, "shard": shard, "replica": self.replica})
