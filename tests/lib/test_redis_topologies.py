"""wacoder.redis against real topologies: open_redis finds out what the URL names (standalone,
any node of a cluster, a sentinel), and Replication.run's writes wait for a replica where there is
one, fail loudly when it does not answer, and survive the failover of their master."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from devtools.stack import free_port
from redis.asyncio.cluster import RedisCluster
from wacoder.redis import NotReplicated, Replication, open_redis
from wacoder.settings import Settings

from tests import redis_cluster as topologies
from tests.harness import RedisServer
from tests.redis_cluster import RedisClusterServer, SentinelServer

# The fixtures, bound by assignment: imported, every test taking one as an argument would be
# flagged as redefining the import (F811).
redis_cluster = topologies.redis_cluster
redis_sentinel = topologies.redis_sentinel

_names = itertools.count()

# Sets a value and bumps its version, in one step: a write as the services make them (no MULTI).
SET_AND_BUMP = """
redis.call('SET', KEYS[1], ARGV[1])
return redis.call('INCR', KEYS[2])
"""


def name() -> str:
    return f"topo:{next(_names)}"


def value_key(user: str) -> str:
    return f"{{{user}}}:value"  # the hash tag keeps a user's keys in one slot


def set_and_bump(store: Any, user: str, value: str) -> Callable[[aioredis.Redis], Awaitable[int]]:
    script = store.register_script(SET_AND_BUMP)

    async def write(conn: aioredis.Redis) -> int:
        return int(await script(keys=[value_key(user), f"{{{user}}}:version"], args=[value], client=conn))

    return write


def wait_calls(port: int) -> int:
    """How many WAIT commands the node has run."""
    with redis.Redis("127.0.0.1", port, decode_responses=True) as client:
        return int(client.info("commandstats").get("cmdstat_wait", {}).get("calls", 0))


def replica_value(port: int, key: str) -> str | None:
    """GET on a cluster replica itself (READONLY: a replica serves reads of its master's slots)."""
    with redis.Redis("127.0.0.1", port, decode_responses=True, single_connection_client=True) as client:
        client.execute_command("READONLY")
        value = client.get(key)
        return None if value is None else str(value)


@pytest.fixture
async def cluster(redis_cluster: RedisClusterServer) -> AsyncIterator[RedisCluster]:
    client = await open_redis(Settings(redis_url=redis_cluster.url))
    assert isinstance(client, RedisCluster)
    await client.initialize()  # the slot map now, so that tests time only their own commands
    yield client
    await client.aclose()


async def test_a_standalone_url_gives_a_plain_client(redis_server: RedisServer) -> None:
    client = await open_redis(Settings(redis_url=redis_server.url))
    try:
        assert type(client) is aioredis.Redis
        await client.set("topo:standalone", "yes")
        assert await client.get("topo:standalone") == "yes"  # decode_responses, as connect()
    finally:
        await client.aclose()


async def test_an_unreachable_redis_gives_a_standalone_client_and_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="wacoder.redis"):
        client = await open_redis(
            Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_start_wait_s=0.5)
        )
    try:
        assert type(client) is aioredis.Redis
        assert any("unreachable" in record.getMessage() for record in caplog.records)
    finally:
        await client.aclose()


async def test_any_cluster_node_url_gives_a_cluster_client_over_every_slot(
    redis_cluster: RedisClusterServer,
) -> None:
    for port in (redis_cluster.replicas()[0], redis_cluster.masters()[0]):
        client = await open_redis(Settings(redis_url=f"redis://127.0.0.1:{port}/0"))
        try:
            assert isinstance(client, RedisCluster), f"node {port}"
            keys = [f"topo:slots:{port}:{i}" for i in range(60)]
            for key in keys:
                await client.set(key, key)
            assert [await client.get(key) for key in keys] == keys
            assert len({client.keyslot(key) for key in keys}) == len(keys)
            # Really spread over the cluster: each key is on the master that owns its slot.
            owners = {redis_cluster.master_for_key(key) for key in keys}
            assert owners == set(redis_cluster.masters())
            for key in keys[:6]:
                with redis.Redis(
                    "127.0.0.1", redis_cluster.master_for_key(key), decode_responses=True
                ) as node:
                    assert node.get(key) == key
        finally:
            await client.aclose()


async def test_a_sentinel_url_reaches_the_master(redis_sentinel: SentinelServer) -> None:
    client = await open_redis(Settings(redis_url=redis_sentinel.url))
    try:
        assert not isinstance(client, RedisCluster)
        await client.set("topo:sentinel", "via-sentinel")
        assert (await client.info("server"))["tcp_port"] == redis_sentinel.master_port
        assert await client.get("topo:sentinel") == "via-sentinel"
    finally:
        await client.aclose()


async def test_a_write_on_the_cluster_waits_until_the_replica_has_it(
    redis_cluster: RedisClusterServer, cluster: RedisCluster
) -> None:
    user = name()
    master = redis_cluster.master_for_key(value_key(user))
    replica = redis_cluster.replicas_of(master)[0]
    waits = wait_calls(master)
    replication = Replication(cluster, replicas=1, timeout_ms=2000)
    try:
        # The script is loaded on the node at its first use (NOSCRIPT), then run by its SHA.
        assert await replication.run(value_key(user), set_and_bump(cluster, user, "v1")) == 1
        assert await replication.run(value_key(user), set_and_bump(cluster, user, "v2")) == 2
    finally:
        await replication.aclose()
    assert wait_calls(master) == waits + 2
    assert replica_value(replica, value_key(user)) == "v2"  # WAIT returned: the replica has it


async def test_a_paused_replica_makes_the_write_not_replicated_within_the_timeout(
    redis_cluster: RedisClusterServer, cluster: RedisCluster
) -> None:
    user = name()
    replica = redis_cluster.replicas_of(redis_cluster.master_for_key(value_key(user)))[0]
    replication = Replication(cluster, replicas=1, timeout_ms=500)
    redis_cluster.pause(replica)
    try:
        started = time.monotonic()
        with pytest.raises(NotReplicated, match="0 of 1 replica"):
            await replication.run(value_key(user), set_and_bump(cluster, user, "unconfirmed"))
        elapsed = time.monotonic() - started
    finally:
        redis_cluster.resume(replica)
        await replication.aclose()
    assert 0.45 <= elapsed < 2.0, elapsed
    # Made on the master all the same: NotReplicated says "may be lost", not "not written".
    assert await cluster.get(value_key(user)) == "unconfirmed"


async def test_a_wait_longer_than_the_socket_timeout_is_not_cut_short_by_it(
    redis_cluster: RedisClusterServer,
) -> None:
    # WAIT blocks for its whole timeout when the replica is stalled: read with the client's 0.2 s
    # socket timeout, it would end in a TimeoutError (and a broken connection), not NotReplicated.
    client = RedisCluster.from_url(redis_cluster.url, decode_responses=True, socket_timeout=0.2)
    user = name()
    replica = redis_cluster.replicas_of(redis_cluster.master_for_key(value_key(user)))[0]
    replication = Replication(client, replicas=1, timeout_ms=600)
    try:
        await client.initialize()
        redis_cluster.pause(replica)
        try:
            with pytest.raises(NotReplicated):
                await replication.run(value_key(user), set_and_bump(client, user, "slow"))
        finally:
            redis_cluster.resume(replica)
        # The same node's connections are still fine for the next write.
        assert await replication.run(value_key(user), set_and_bump(client, user, "next")) == 2
    finally:
        await replication.aclose()
        await client.aclose()


async def test_a_standalone_redis_without_replicas_does_not_wait(redis_server: RedisServer) -> None:
    client = await open_redis(Settings(redis_url=redis_server.url))
    user = name()
    waits = wait_calls(redis_server.port)
    try:
        replication = Replication(client, replicas=1, timeout_ms=5000)
        started = time.monotonic()
        assert await replication.run(value_key(user), set_and_bump(client, user, "alone")) == 1
        assert time.monotonic() - started < 1.0
        assert await client.get(value_key(user)) == "alone"
    finally:
        await client.aclose()
    assert wait_calls(redis_server.port) == waits


async def test_a_write_behind_sentinel_waits_for_the_replica(redis_sentinel: SentinelServer) -> None:
    client = await open_redis(Settings(redis_url=redis_sentinel.url))
    user = name()
    waits = wait_calls(redis_sentinel.master_port)
    try:
        replication = Replication(client, replicas=1, timeout_ms=2000)
        assert await replication.run(value_key(user), set_and_bump(client, user, "sentinel")) == 1
    finally:
        await client.aclose()
    assert wait_calls(redis_sentinel.master_port) == waits + 1
    with redis.Redis("127.0.0.1", redis_sentinel.replica_port, decode_responses=True) as replica:
        assert replica.get(value_key(user)) == "sentinel"


async def test_a_stale_slot_map_is_refreshed_on_moved_and_the_write_retried(
    redis_cluster: RedisClusterServer, cluster: RedisCluster
) -> None:
    user = name()
    key = value_key(user)
    owner = redis_cluster.master_for_key(key)
    await cluster.initialize()
    # As after a failover the client has not seen yet: the slot mapped to a node that lost it.
    wrong = next(node for node in cluster.get_primaries() if int(node.port) != owner)
    cluster.nodes_manager.slots_cache[cluster.keyslot(key)] = [wrong]
    replication = Replication(cluster, replicas=1, timeout_ms=2000)
    try:
        assert await replication.run(key, set_and_bump(cluster, user, "moved")) == 1
    finally:
        await replication.aclose()
    assert int(cluster.get_node_from_key(key).port) == owner
    with redis.Redis("127.0.0.1", owner, decode_responses=True) as node:
        assert node.get(key) == "moved"


# Last: it leaves the cluster with a dead master.
async def test_confirmed_writes_survive_the_failover_of_their_master(
    redis_cluster: RedisClusterServer, cluster: RedisCluster
) -> None:
    users = [f"failover:{i}" for i in range(20)]
    master = redis_cluster.master_for_key(value_key(users[0]))
    users = [user for user in users if redis_cluster.master_for_key(value_key(user)) == master]
    assert len(users) >= 3
    replica = redis_cluster.replicas_of(master)[0]
    replication = Replication(cluster, replicas=1, timeout_ms=2000)
    try:
        for user in users:
            await replication.run(value_key(user), set_and_bump(cluster, user, f"kept:{user}"))
        redis_cluster.kill(master)  # at once: nothing more gets to the replica
        await asyncio.to_thread(redis_cluster.wait_failover, master, 20.0)
        assert redis_cluster.master_for_key(value_key(users[0])) == replica
        # The cluster client finds the new master itself (a connection error makes it re-read the map).
        assert [await cluster.get(value_key(user)) for user in users] == [f"kept:{user}" for user in users]
        # And durable writes go on, to the promoted replica (no replica of its own: no WAIT).
        assert await replication.run(value_key(users[0]), set_and_bump(cluster, users[0], "after")) == 2
    finally:
        await replication.aclose()


def free_port_below_ephemeral() -> int:
    """A free port outside the kernel's ephemeral range. Connecting again and again to a closed
    port in that range can pick the same port as its own source and connect to itself (a TCP
    self-connect), which then holds the port the late node wants (it happened in CI)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for port in random.sample(range(10_000, low), 200):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


async def test_a_cluster_node_that_starts_late_is_still_recognised(tmp_path: Path) -> None:
    """Services may start before Redis: open_redis waits for it rather than take a cluster for a
    standalone Redis (which would answer MOVED for most keys until a restart)."""
    port = free_port_below_ephemeral()
    opening = asyncio.create_task(open_redis(Settings(redis_url=f"redis://127.0.0.1:{port}/0")))
    await asyncio.sleep(1.5)
    assert not opening.done()
    node = await asyncio.create_subprocess_exec(
        *("redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""),
        *("--cluster-enabled", "yes", "--cluster-config-file", str(tmp_path / "nodes.conf")),
        *("--dir", str(tmp_path)),
        stdout=asyncio.subprocess.DEVNULL,
    )
    try:
        client = await asyncio.wait_for(opening, timeout=15)
        assert isinstance(client, RedisCluster)
        await client.aclose()
    finally:
        node.kill()
        await node.wait()
