"""The Redis connection every service uses (one pool per process): `open_redis()` for any
topology (standalone, Redis Cluster, Sentinel), and `Replication` for writes that must survive
a failover."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.asyncio.connection import parse_url
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import AskError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from wacoder.settings import Settings


async def ping(client: Store) -> bool:
    try:
        return bool(await client.ping())
    except Exception:
        return False


# --- Any topology: standalone, Redis Cluster, Sentinel ---------------------------------------------

log = logging.getLogger("wacoder.redis")

# What a service holds: a plain client (standalone Redis, or the master behind Sentinel) or a cluster
# client. Both speak the same commands for single-key (or single-slot) work.
Store: TypeAlias = aioredis.Redis | RedisCluster
# A pipeline of either (a MULTI on a cluster must stay within one slot).
Pipe: TypeAlias = aioredis.client.Pipeline | ClusterPipeline

# Every kind of client open_redis makes: short socket timeouts, so a Redis that stopped answering
# turns into an error the caller can act on (a 503, a retry) within seconds, not a hung request.
_CLIENT_OPTIONS: dict[str, Any] = {
    "decode_responses": True,
    "socket_connect_timeout": 2.0,
    "socket_timeout": 5.0,
    "health_check_interval": 15,
}

SENTINEL_SCHEME = "redis+sentinel"

_SENTINEL_PORT = 26379


async def open_redis(settings: Settings) -> Store:
    """A client for whatever `settings.redis_url` names.

    - `redis://` / `rediss://` of a standalone Redis: a plain client.
    - the same URL of ANY node of a Redis Cluster, master or replica: a cluster client, which
      discovers the other nodes from it. Cluster mode has db 0 only.
    - `redis+sentinel://[[user]:password@]host:port[,host2:port2...]/service_name[/db][?options]`:
      the current master of `service_name` as the sentinels name it, followed across failovers.
      The credentials, db and options are parsed by redis-py as for a `redis://` URL and are the
      master's; the sentinels themselves are asked without credentials.

    A Redis that cannot be reached is waited for up to REDIS_START_WAIT_S, then taken for a standalone
    one, with a warning, so a service still starts and reports itself not ready. (A cluster is
    then not recognised: the keys of other nodes' slots answer MOVED until the process restarts.)
    """
    url = settings.redis_url
    if urlsplit(url).scheme == SENTINEL_SCHEME:
        return _sentinel_master(url)
    client = aioredis.from_url(url, **_CLIENT_OPTIONS)
    # A Redis that is still starting is waited for a while: taking a cluster for a standalone
    # Redis would leave the process with MOVED errors until it restarts.
    deadline = time.monotonic() + settings.redis_start_wait_s
    delay = 0.25
    while True:
        try:
            info = await client.info("cluster")
            break
        except (RedisConnectionError, RedisTimeoutError) as exc:
            if time.monotonic() + delay > deadline:
                log.warning("Redis unreachable at start (%s); assuming a standalone Redis", exc)
                return client
            await asyncio.sleep(delay)
            delay = min(delay * 2, 4.0)
        except ResponseError:
            # INFO refused (an ACL, a managed Redis): clusters answer it, so this is not one.
            return client
    if int(info.get("cluster_enabled", 0)) != 1:
        return client
    await client.aclose()
    return RedisCluster.from_url(url, **_CLIENT_OPTIONS)


def _sentinel_master(url: str) -> aioredis.Redis:
    parts = urlsplit(url)
    credentials, _, hosts = parts.netloc.rpartition("@")
    sentinels = [_host_port(host) for host in hosts.split(",") if host]
    path = [unquote(part) for part in parts.path.split("/") if part]
    if not sentinels or not path:
        raise ValueError(f"a Sentinel URL needs host:port and a service name: {SENTINEL_SCHEME}://h:p/name")
    service_name, db = path[0], (path[1] if len(path) > 1 else "0")
    # redis-py parses the rest exactly as for a redis:// URL (quoting, query options and all).
    netloc = f"{credentials}@localhost" if credentials else "localhost"
    options = parse_url(urlunsplit(("redis", netloc, f"/{db}", parts.query, "")))
    options.pop("host", None)
    options.pop("port", None)
    # The sentinels get the socket timeouts only; the master all options, the URL's winning.
    sentinel = Sentinel(sentinels, **_CLIENT_OPTIONS)
    return sentinel.master_for(service_name, redis_class=_SentinelMaster, **options)


class _SentinelMaster(aioredis.Redis):
    """The master's client, which closes the clients of the sentinels with its pool (redis-py
    leaves those open)."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        closes_pool = close_connection_pool or (
            close_connection_pool is None and self.auto_close_connection_pool
        )
        await super().aclose(close_connection_pool)
        if closes_pool:  # not for the single-connection clients of `.client()`, which share the pool
            for sentinel in self.connection_pool.sentinel_manager.sentinels:
                await sentinel.aclose()


def _host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or host.endswith(":"):  # no port given (plain host, or a bare IPv6 address)
        return address.strip("[]"), _SENTINEL_PORT
    return host.strip("[]"), int(port)


# --- Durable writes: WAIT for a replica ------------------------------------------------------------

T = TypeVar("T")

# How long the node's replica count is trusted: INFO on every write would double its round trips.
_REPLICA_COUNT_TTL_S = 10.0
# The read of WAIT's reply may take this much longer than WAIT's own timeout (network, a busy node).
_WAIT_READ_SLACK_S = 2.0


class NotReplicated(RedisError):
    """The write was made on the master but fewer replicas than asked acknowledged it in time: it
    may be lost in a failover. A RedisError, so callers' `except RedisError` (→ 503) covers it."""


class Replication:
    """Writes that a failover does not lose: `run(key, write)` makes the write on the master that
    owns `key`, then waits (WAIT) until `replicas` of its replicas have it, or raises NotReplicated
    after `timeout_ms`.

    The wait applies only where there is something to wait for: `replicas` > 0 and the node has a
    connected replica (INFO replication, trusted for ~10 s). A standalone Redis without replicas,
    or a master whose replicas are all gone, takes the write without waiting.

    WAIT counts only the writes made on its own connection, so `write` gets a client bound to one
    connection of that node, and must use single commands or a Lua script (a registered Script
    is called as `await script(keys=[...], args=[...], client=conn)`), not MULTI: WAIT inside
    MULTI returns at once. In a cluster every key `write` touches must be in `key`'s slot.

    A cluster node that answers MOVED or ASK (the slot moved, e.g. after a failover) makes the slot
    map be refreshed and the write retried once: the write was not made. After a connection error
    the write may or may not have been made, so it is not retried, but the next run refreshes the
    slot map first.
    """

    def __init__(self, client: Store, *, replicas: int, timeout_ms: int) -> None:
        if replicas < 0:
            raise ValueError("replicas must be >= 0")
        if timeout_ms <= 0:
            raise ValueError("timeout_ms must be > 0 (WAIT 0 would block forever)")
        self.client = client
        self.replicas = replicas
        self.timeout_ms = timeout_ms
        self._node_clients: dict[str, aioredis.Redis] = {}  # cluster node name → its own client
        self._replica_counts: dict[str, tuple[float, int]] = {}  # node → (valid until, count)
        self._slots_stale = False

    @classmethod
    def from_settings(cls, client: Store, settings: Settings) -> Replication:
        return cls(client, replicas=settings.redis_wait_replicas, timeout_ms=settings.redis_wait_timeout_ms)

    async def run(self, key: str, write: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        if not isinstance(self.client, RedisCluster):
            async with self.client.client() as conn:
                return await self._write_and_wait(conn, write)
        return await self._run_on_cluster(self.client, key, write)

    async def aclose(self) -> None:
        """Closes the per-node clients of a cluster (not the client given, which is the caller's)."""
        clients, self._node_clients = list(self._node_clients.values()), {}
        for client in clients:
            await client.aclose(close_connection_pool=True)

    async def _run_on_cluster(
        self, cluster: RedisCluster, key: str, write: Callable[[aioredis.Redis], Awaitable[T]]
    ) -> T:
        await cluster.initialize()  # the slot map, once
        if self._slots_stale:
            self._slots_stale = False
            await cluster.nodes_manager.initialize()
        for attempt in range(2):
            node = cluster.get_node_from_key(key)
            try:
                async with self._node_client(node).client() as conn:
                    return await self._write_and_wait(conn, write)
            except AskError:  # MovedError included
                if attempt:
                    raise
                await cluster.nodes_manager.initialize()
            except (RedisConnectionError, RedisTimeoutError):
                self._slots_stale = True
                raise
        raise AssertionError("unreachable")

    def _node_client(self, node: Any) -> aioredis.Redis:
        """A client of one cluster node with the cluster's own connection options (auth, TLS,
        timeouts), kept for the next write to that node."""
        client = self._node_clients.get(node.name)
        if client is None:
            pool = aioredis.ConnectionPool(
                connection_class=node.connection_class,
                max_connections=node.max_connections,
                **node.connection_kwargs,
            )
            client = self._node_clients[node.name] = aioredis.Redis(connection_pool=pool)
        return client

    async def _write_and_wait(
        self, conn: aioredis.Redis, write: Callable[[aioredis.Redis], Awaitable[T]]
    ) -> T:
        result = await write(conn)
        if self.replicas > 0 and await self._connected_replicas(conn) > 0:
            acknowledged = await self._wait(conn)
            if acknowledged < self.replicas:
                raise NotReplicated(
                    f"{_node_name(conn)}: {acknowledged} of {self.replicas} replica(s) acknowledged "
                    f"the write within {self.timeout_ms} ms"
                )
        return result

    async def _connected_replicas(self, conn: aioredis.Redis) -> int:
        node = _node_name(conn)
        now = time.monotonic()
        cached = self._replica_counts.get(node)
        if cached is not None and cached[0] > now:
            return cached[1]
        info = await conn.info("replication")
        count = int(info.get("connected_slaves", 0))
        self._replica_counts[node] = (now + _REPLICA_COUNT_TTL_S, count)
        return count

    async def _wait(self, conn: aioredis.Redis) -> int:
        # On the connection itself: WAIT may outlast the client's socket timeout, so its reply is
        # read with a timeout of its own.
        connection = conn.connection
        await connection.send_command("WAIT", self.replicas, self.timeout_ms)
        reply = await connection.read_response(timeout=self.timeout_ms / 1000 + _WAIT_READ_SLACK_S)
        if reply is None:  # the read timed out with the reply still owed: the connection is unusable
            await connection.disconnect()
            raise RedisTimeoutError(
                f"{_node_name(conn)}: no answer to WAIT {self.replicas} {self.timeout_ms}"
            )
        return int(reply)


def _node_name(conn: aioredis.Redis) -> str:
    connection = conn.connection
    return f"{getattr(connection, 'host', '?')}:{getattr(connection, 'port', '?')}"
