"""Shard leases (wacoder.leases.ShardLeases) against a real Redis, in-process: how the shards of a
service are shared among its replicas as they come, go, crash and come back.

Every replica's `on_acquired`/`on_released` (the start and the stop of a shard's work) is
recorded by one `Owners`, which checks at every call that no shard is worked by two replicas at
once, that a replica starts a shard only while Redis names it the lease's owner, and that each
change is reported exactly once. The TTL is small (600 ms: a tick every 200 ms) so that expiry
can be watched."""

from __future__ import annotations

import asyncio
import io
import itertools
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

import pytest
import redis.asyncio as aioredis
from wacoder import keys
from wacoder.leases import ShardCallback, ShardLeases
from wacoder.redis import Store, open_redis
from wacoder.settings import Settings

from tests.harness import RedisServer

SHARDS = 8
TTL_MS = 600
TTL_S = TTL_MS / 1000
ALL = frozenset(range(SHARDS))

_services = itertools.count()


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    own = RedisServer()
    own.start()
    yield own
    own.stop()


class Owners:
    """Who works which shard, as the callbacks of every replica tell it."""

    def __init__(self, redis: aioredis.Redis, service: str) -> None:
        self.redis = redis
        self.service = service
        self.held: dict[str, set[int]] = defaultdict(set)
        # (monotonic time, replica, "acquired" | "released", shard), in call order.
        self.events: list[tuple[float, str, str, int]] = []
        self.violations: list[str] = []

    def callbacks(self, replica: str, drain_s: float = 0.0) -> tuple[ShardCallback, ShardCallback]:
        async def acquired(shard: int) -> None:
            self.events.append((time.monotonic(), replica, "acquired", shard))
            if shard in self.held[replica]:
                self.violations.append(f"{replica} told twice that it has shard {shard}")
            for other, shards in self.held.items():
                if other != replica and shard in shards:
                    self.violations.append(f"{replica} starts shard {shard} while {other} still works it")
            lease = await self.redis.get(keys.shard_lease(self.service, shard))
            if lease != replica:
                self.violations.append(f"{replica} starts shard {shard} whose lease names {lease}")
            self.held[replica].add(shard)

        async def released(shard: int) -> None:
            await asyncio.sleep(drain_s)  # the shard's running work finishing
            self.events.append((time.monotonic(), replica, "released", shard))
            if shard not in self.held[replica]:
                self.violations.append(f"{replica} told to stop shard {shard} it does not work")
            self.held[replica].discard(shard)

        return acquired, released

    def crashed(self, replica: str) -> None:
        """kill -9: the replica's work dies with it, without a callback."""
        self.held.pop(replica, None)

    def of(self, replica: str, change: str) -> list[int]:
        return [shard for _, who, what, shard in self.events if who == replica and what == change]


@dataclass
class Replicas:
    """Makes the replicas of one service (a fresh name per test), each with a Redis client of its
    own, as separate processes would have."""

    url: str
    service: str
    owners: Owners
    clients: list[Store] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def make(self, replica: str, *, client: Store | None = None, drain_s: float = 0.0) -> ShardLeases:
        redis = client or aioredis.from_url(self.url, decode_responses=True)
        self.clients.append(redis)
        acquired, released = self.owners.callbacks(replica, drain_s)
        return ShardLeases(
            redis,
            service=self.service,
            replica=replica,
            shards=SHARDS,
            ttl_ms=TTL_MS,
            on_acquired=acquired,
            on_released=released,
        )

    def run(self, leases: ShardLeases) -> asyncio.Task[None]:
        task = asyncio.create_task(leases.run())
        self.tasks.append(task)
        return task

    async def lease_owners(self) -> dict[int, str | None]:
        """What Redis says: the owner of each shard's lease."""
        names = [keys.shard_lease(self.service, shard) for shard in range(SHARDS)]
        return dict(enumerate(await self.owners.redis.mget(names)))


@pytest.fixture
async def replicas(server: RedisServer) -> AsyncIterator[Replicas]:
    service = f"leasetest{next(_services)}"
    checker = aioredis.from_url(server.url, decode_responses=True)
    made = Replicas(server.url, service, Owners(checker, service))
    yield made
    for task in made.tasks:
        task.cancel()
    # A replica's run() must end when cancelled (a service's shutdown waits for it): bounded, and
    # if it does not, the test says where each task was stuck instead of hanging the suite.
    stuck = (await asyncio.wait(made.tasks, timeout=10))[1] if made.tasks else set()
    where = {}
    for task in stuck:
        stack = io.StringIO()
        task.print_stack(file=stack)
        where[task.get_name()] = stack.getvalue()
    for client in made.clients:
        async with asyncio.timeout(10):
            await client.aclose()
    await checker.aclose()
    assert not stuck, f"replicas still running 10 s after cancel(): {where}"


async def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        await asyncio.sleep(0.01)


def balanced(*leases: ShardLeases) -> bool:
    owned = [lease.owned for lease in leases]
    fair = -(-SHARDS // len(leases))
    return (
        frozenset().union(*owned) == ALL and sum(map(len, owned)) == SHARDS and max(map(len, owned)) <= fair
    )


async def test_a_replica_alone_takes_every_shard(replicas: Replicas) -> None:
    alone = replicas.make("alone")

    await alone.tick()

    assert alone.owned == ALL
    assert sorted(replicas.owners.of("alone", "acquired")) == sorted(ALL)  # each started once
    assert set((await replicas.lease_owners()).values()) == {"alone"}
    assert replicas.owners.violations == []


async def test_a_second_replica_gets_half_and_no_shard_is_worked_twice(replicas: Replicas) -> None:
    first, second = replicas.make("first"), replicas.make("second")
    replicas.run(first)
    await wait_until(lambda: first.owned == ALL, 2, "the first replica holds every shard")

    replicas.run(second)
    await wait_until(lambda: len(second.owned) == SHARDS // 2, 3, "the second replica holds half")

    assert first.owned | second.owned == ALL
    assert first.owned.isdisjoint(second.owned)
    assert len(first.owned) == SHARDS // 2
    settled = len(replicas.owners.events)
    await asyncio.sleep(4 * first.tick_s)
    assert len(replicas.owners.events) == settled, "they keep their shards: no flapping"
    # The first gave up exactly the half the second took, each shard once.
    assert sorted(replicas.owners.of("first", "released")) == sorted(second.owned)
    assert sorted(replicas.owners.of("second", "acquired")) == sorted(second.owned)
    owners = await replicas.lease_owners()
    assert {shard for shard, owner in owners.items() if owner == "second"} == second.owned
    assert {shard for shard, owner in owners.items() if owner == "first"} == first.owned
    assert replicas.owners.violations == []


async def test_a_stopped_replica_hands_its_shards_over_at_once(replicas: Replicas) -> None:
    stays, leaves = replicas.make("stays"), replicas.make("leaves")
    for leases in (stays, leaves, stays, leaves):
        await leases.tick()
    assert balanced(stays, leaves)
    given_back = leaves.owned

    await leaves.tick()  # its leases renewed: they would hold for another TTL
    renewed = time.monotonic()
    await leaves.stop()

    owners = await replicas.lease_owners()
    assert all(owners[shard] is None for shard in given_back), "the leases are deleted, not left to expire"
    assert sorted(replicas.owners.of("leaves", "released")) == sorted(given_back)
    assert leaves.owned == frozenset()
    await stays.tick()  # the next tick of the one that stays
    assert stays.owned == ALL
    assert time.monotonic() - renewed < TTL_S, "taken over before the stopped one's leases could expire"
    assert replicas.owners.violations == []


async def test_a_killed_replica_shards_are_taken_over_after_the_ttl_and_not_before(
    replicas: Replicas,
) -> None:
    survivor, victim = replicas.make("survivor"), replicas.make("victim")
    replicas.run(survivor)
    victim_run = replicas.run(victim)
    await wait_until(lambda: balanced(survivor, victim), 3, "the two share the shards")
    orphans = victim.owned

    victim_run.cancel()  # kill -9: no stop(), no more renewals
    await asyncio.gather(victim_run, return_exceptions=True)
    replicas.owners.crashed("victim")
    async with replicas.owners.redis.pipeline(transaction=False) as pipe:
        for shard in sorted(orphans):
            pipe.pttl(keys.shard_lease(replicas.service, shard))
        remaining_ms = await pipe.execute()
    read_at = time.monotonic()
    assert all(ms > 0 for ms in remaining_ms), "the dead replica's leases are still alive"
    expires_at = {shard: read_at + ms / 1000 for shard, ms in zip(sorted(orphans), remaining_ms, strict=True)}

    # Half-way to the first expiry: nobody took them over.
    await asyncio.sleep(min(remaining_ms) / 2000)
    assert survivor.owned.isdisjoint(orphans)
    assert set((await replicas.lease_owners()).values()) == {"survivor", "victim"}

    await wait_until(lambda: survivor.owned == ALL, TTL_S + 1.5, "the survivor takes every shard")
    taken_at = {
        shard: at for at, who, what, shard in replicas.owners.events if who == "survivor" and shard in orphans
    }
    assert taken_at.keys() == orphans
    for shard in orphans:
        # 10 ms for the clocks of Redis and of this process.
        assert taken_at[shard] >= expires_at[shard] - 0.01, (
            f"shard {shard} taken over before its lease expired"
        )
    assert replicas.owners.violations == []


async def test_callbacks_report_each_change_once_while_replicas_come_and_go(replicas: Replicas) -> None:
    a, b, c = replicas.make("a"), replicas.make("b"), replicas.make("c")
    replicas.run(a)
    await wait_until(lambda: a.owned == ALL, 2, "a alone holds every shard")
    b_run = replicas.run(b)
    await wait_until(lambda: balanced(a, b), 3, "a and b share")
    c_run = replicas.run(c)
    await wait_until(lambda: balanced(a, b, c), 3, "a, b and c share")
    await b.stop()
    await b_run
    await wait_until(lambda: balanced(a, c), 3, "a and c share after b stopped")
    c_run.cancel()  # killed
    await asyncio.gather(c_run, return_exceptions=True)
    replicas.owners.crashed("c")
    # Its callbacks too: a shard counts as owned just before its on_acquired has run.
    await wait_until(
        lambda: a.owned == ALL and replicas.owners.held["a"] == set(ALL),
        TTL_S + 1.5,
        "a holds every shard after c died",
    )

    # Per replica and shard: started, stopped, started, ... never twice the same in a row.
    changes: dict[tuple[str, int], list[str]] = defaultdict(list)
    for _, replica, change, shard in replicas.owners.events:
        changes[replica, shard].append(change)
    for (replica, shard), seen in changes.items():
        assert seen[::2] == ["acquired"] * len(seen[::2]), f"{replica}, shard {shard}: {seen}"
        assert seen[1::2] == ["released"] * len(seen[1::2]), f"{replica}, shard {shard}: {seen}"
    assert set(replicas.owners.of("b", "acquired")) == set(replicas.owners.of("b", "released"))
    assert replicas.owners.held["a"] == set(ALL)
    assert replicas.owners.violations == []


async def test_a_restarted_replica_takes_its_own_shards_back_at_once(replicas: Replicas) -> None:
    pod, peer = replicas.make("agent-0"), replicas.make("agent-1")
    for leases in (pod, peer, pod, peer):
        await leases.tick()
    assert balanced(pod, peer)
    its_own, peers = pod.owned, peer.owned

    await pod.tick()
    last_renewed = time.monotonic()
    replicas.owners.crashed("agent-0")  # killed; Kubernetes starts it again under its name
    restarted = replicas.make("agent-0")
    await restarted.tick()

    assert restarted.owned == its_own
    assert time.monotonic() - last_renewed < TTL_S, "it did not wait for its old leases to expire"
    await peer.tick()
    assert peer.owned == peers
    assert replicas.owners.of("agent-1", "released") == []
    assert replicas.owners.violations == []


async def test_a_lease_taken_in_redis_is_released_on_the_next_tick(replicas: Replicas) -> None:
    holder = replicas.make("holder")
    await holder.tick()
    assert holder.owned == ALL
    lease = keys.shard_lease(replicas.service, 3)
    await replicas.owners.redis.set(lease, "intruder", px=60_000)

    await holder.tick()

    assert holder.owned == ALL - {3}
    assert replicas.owners.of("holder", "released") == [3]
    assert await replicas.owners.redis.get(lease) == "intruder"  # not taken back while it is another's
    await holder.tick()
    assert replicas.owners.of("holder", "released") == [3], "told once"

    await replicas.owners.redis.delete(lease)  # the intruder gives it back
    await holder.tick()
    assert holder.owned == ALL
    assert replicas.owners.of("holder", "acquired").count(3) == 2
    assert replicas.owners.violations == []


# Found while writing these tests (and fixed): the bounds promised by wacoder/leases.py.


async def test_a_slow_drain_does_not_let_a_peer_start_before_it_finished(replicas: Replicas) -> None:
    # Each shard's running turn takes 200 ms to finish (the agent waits up to 5 s per shard,
    # with a 6 s TTL): handing over 8 shards takes 1.6 s, longer than the 600 ms TTL.
    leaving = replicas.make("leaving", drain_s=0.2)
    staying = replicas.make("staying")
    await leaving.tick()
    replicas.run(staying)
    await asyncio.sleep(staying.tick_s)

    await leaving.stop()

    await wait_until(lambda: staying.owned == ALL, 3, "the staying replica takes every shard")
    assert replicas.owners.violations == []


class Cable:
    """A TCP proxy in front of Redis that can be cut like a network partition: the connections
    stay open, nothing gets through either way."""

    def __init__(self, redis_port: int) -> None:
        self.redis_port = redis_port
        self.up = asyncio.Event()
        self.up.set()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pipes: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connect, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        redis_reader, redis_writer = await asyncio.open_connection("127.0.0.1", self.redis_port)
        self._pipes += [
            asyncio.create_task(self._pipe(reader, redis_writer)),
            asyncio.create_task(self._pipe(redis_reader, writer)),
        ]

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self.up.wait()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for pipe in self._pipes:
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)


async def test_a_replica_cut_off_from_redis_stops_its_work_before_a_peer_takes_it(
    replicas: Replicas, server: RedisServer
) -> None:
    cable = Cable(server.port)
    await cable.start()
    try:
        # The client the services use (wacoder.redis.open_redis: a 5 s socket timeout).
        settings = Settings(redis_url=f"redis://127.0.0.1:{cable.port}/0")
        cut_off = replicas.make("cut-off", client=await open_redis(settings))
        peer = replicas.make("peer")
        replicas.run(cut_off)
        replicas.run(peer)
        await wait_until(lambda: balanced(cut_off, peer), 3, "the two share the shards")

        cable.up.clear()  # a partition: the cut-off replica no longer reaches Redis, the peer does

        await wait_until(lambda: peer.owned == ALL, TTL_S + 1.5, "the peer takes every shard")
        await wait_until(lambda: not cut_off.owned, 8, "the cut-off replica stops its work")
        assert replicas.owners.violations == []
    finally:
        cable.up.set()
        await cable.close()
