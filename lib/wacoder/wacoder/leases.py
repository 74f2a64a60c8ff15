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
  the lease is deleted, so the next owner never starts while we still work on it. The leases
  are renewed meanwhile (a drain may outlast the TTL), by a keeper of their own.
- Losing one: the keeper renews every quarter TTL, each round bounded by a quarter TTL. A
  lease not renewed for half its TTL (Redis away or unreachable), or found to be someone
  else's, is lost: a watch wakes at that deadline, whatever Redis does, and cancels the
  shard's work at once (`on_lost`, no drain), before anyone else can take it over.
- A replica killed with -9 simply stops renewing: its leases expire after the TTL and its
  shards are taken over by the others, with whatever it left pending.

The invariant rests on the clocks of Redis (TTL) and of the owner (the local deadline); a
process stalled for longer than the TTL (SIGSTOP, a long GC pause) may overlap with its
successor until it notices. The work itself is idempotent (stored replies, idempotency keys),
so an overlap can reorder but never duplicate what a user receives (docs/adr/0007).
"""

from __future__ import annotations

import asyncio
import contextlib
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
from wacoder.waiting import wait_event

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
        on_lost: ShardCallback | None = None,
    ) -> None:
        """`on_released` stops a shard's work gracefully (drains it); `on_lost` (default: the
        same) must stop it at once: the lease may be someone else's already."""
        self.redis = redis
        self.service = service
        self.replica = replica
        self.shards = shards
        self.ttl_ms = ttl_ms
        self.on_acquired = on_acquired
        self.on_released = on_released
        self.on_lost = on_lost or on_released
        # Shard -> local deadline (monotonic) until which the lease is surely ours.
        self._held: dict[int, float] = {}
        # Shards being given back: their leases are still ours (renewed) until drained.
        self._draining: set[int] = set()
        self._take = redis.register_script(_TAKE)
        self._renew = redis.register_script(_RENEW)
        self._give_back = redis.register_script(_GIVE_BACK)
        self._stopping = asyncio.Event()
        # Rebalancing and stopping never interleave (a stop waits for a running rebalance).
        self._rebalancing = asyncio.Lock()
        self._keepers: list[asyncio.Task[None]] = []
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

    @property
    def _ttl_s(self) -> float:
        return self.ttl_ms / 1000

    async def run(self) -> None:
        """Holds and rebalances shards until `stop()` (or until cancelled, as a crash would:
        nothing is renewed any more); survives Redis going away."""
        self._keepers = [
            asyncio.create_task(self._keep_alive(), name="shard-lease-keeper"),
            asyncio.create_task(self._watch_deadlines(), name="shard-lease-deadlines"),
        ]
        try:
            while not self._stopping.is_set():
                try:
                    await self._rebalance()
                except (RedisError, OSError) as error:
                    log.warning("shard leases: redis unavailable", extra={"error": str(error)})
                except Exception:
                    log.exception("shard leases: rebalancing failed")
                await wait_event(self._stopping, self.tick_s)
        except asyncio.CancelledError:
            await self._stop_keepers()
            raise

    async def tick(self) -> None:
        """One round by hand (what `run` does on its own): register and renew, then give back or
        take shards towards the fair share."""
        await self._renew_all()
        await self._drop_expired()
        await self._rebalance()

    async def stop(self) -> None:
        """Stops each shard's work (drained, all at once) and gives its lease back, so peers
        take over at once; the leases are kept alive until then."""
        self._stopping.set()
        async with self._rebalancing:
            shards = sorted(self._held)
            self._held.clear()
            self._draining.update(shards)
            await asyncio.gather(*(self.on_released(shard) for shard in shards), return_exceptions=True)
        await self._stop_keepers()
        for shard in shards:
            await self._give_back_lease(shard)
        try:
            await self.redis.zrem(keys.replicas(self.service), self.replica)
        except (RedisError, OSError):
            pass  # the registration expires on its own

    # --- Keeping: registration, renewals, deadlines ----------------------------------------------

    async def _stop_keepers(self) -> None:
        for task in self._keepers:
            task.cancel()
        await asyncio.gather(*self._keepers, return_exceptions=True)

    async def _keep_alive(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.ttl_ms / 4000):
                    await self._renew_all()
            except TimeoutError:
                pass  # Redis did not answer in time: the deadlines decide
            except Exception:
                log.exception("shard leases: renewing failed")
            await asyncio.sleep(self.ttl_ms / 4000)

    async def _watch_deadlines(self) -> None:
        """Wakes at the earliest deadline, whatever Redis does, and stops what it lost."""
        while True:
            now = time.monotonic()
            earliest = min(self._held.values(), default=now + self.ttl_ms / 8000)
            await asyncio.sleep(max(earliest - now, 0.005))
            await self._drop_expired()

    async def _renew_all(self) -> None:
        """Registers this replica and renews every lease it holds (drained ones too); a lease
        found to be someone else's is lost."""
        with contextlib.suppress(RedisError, OSError):
            await self._register()
        held = sorted(set(self._held) | self._draining)
        began = time.monotonic()
        answers = await asyncio.gather(
            *(
                self._renew(keys=[keys.shard_lease(self.service, shard)], args=[self.replica, self.ttl_ms])
                for shard in held
            ),
            return_exceptions=True,
        )
        for shard, ours in zip(held, answers, strict=True):
            if isinstance(ours, BaseException) or shard not in self._held:
                continue  # unknown (the deadline decides), or being given back
            if ours:
                self._held[shard] = began + self._ttl_s / 2
            else:
                log.warning("shard lease lost", extra={"service": self.service, "shard": shard})
                await self._lose(shard)

    async def _drop_expired(self) -> None:
        now = time.monotonic()
        for shard, deadline in list(self._held.items()):
            if now >= deadline:
                log.warning("shard lease not renewed in time; stopping its work", extra={"shard": shard})
                await self._lose(shard)

    async def _lose(self, shard: int) -> None:
        if self._held.pop(shard, None) is not None:
            await self.on_lost(shard)

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

    # --- Rebalancing ------------------------------------------------------------------------------

    async def _rebalance(self) -> None:
        async with self._rebalancing:
            if self._stopping.is_set():
                return
            live = await self._register()
            target = math.ceil(self.shards / max(live, 1))
            surplus = len(self._held) - target
            if surplus > 0:
                await asyncio.gather(*(self._release(s) for s in sorted(self._held, reverse=True)[:surplus]))
                return
            for shard in self._preference:
                if len(self._held) >= target or self._stopping.is_set():
                    break
                if shard not in self._held and shard not in self._draining:
                    began = time.monotonic()
                    lease = keys.shard_lease(self.service, shard)
                    if await self._take(keys=[lease], args=[self.replica, self.ttl_ms]):
                        self._held[shard] = began + self._ttl_s / 2
                        log.info("shard acquired", extra={"service": self.service, "shard": shard})
                        await self.on_acquired(shard)

    async def _release(self, shard: int) -> None:
        if self._held.pop(shard, None) is None:
            return
        self._draining.add(shard)
        try:
            await self.on_released(shard)
        finally:
            await self._give_back_lease(shard)
        log.info("shard released", extra={"service": self.service, "shard": shard})

    async def _give_back_lease(self, shard: int) -> None:
        try:
            await self._give_back(keys=[keys.shard_lease(self.service, shard)], args=[self.replica])
        except (RedisError, OSError):
            pass  # it expires on its own
        finally:
            self._draining.discard(shard)
