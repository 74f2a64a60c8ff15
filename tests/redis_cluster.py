"""Real Redis topologies for tests: a Redis Cluster (3 masters, 3 replicas) and a Sentinel (master,
replica, one sentinel), each of processes on free ports in a temp dir of its own.

A test module binds the fixtures it uses explicitly: `redis_cluster = topologies.redis_cluster`
after `from tests import redis_cluster as topologies` (an import of the fixture itself also works,
but ruff then flags each test taking it as an argument: F811)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from devtools.embedded_redis import redis_server_binary
from devtools.stack import free_port, port_open

HOST = "127.0.0.1"


def _free_ports(count: int) -> list[int]:
    """Distinct free ports (free_port alone may hand out the same one twice)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def _client(port: int) -> redis.Redis:
    return redis.Redis(HOST, port, decode_responses=True, socket_timeout=2.0, socket_connect_timeout=1.0)


def _query(port: int, *command: str) -> str:
    """One command's raw reply (no redis-py parsing), e.g. `_query(p, "CLUSTER", "NODES")`."""
    with _client(port) as client:
        return str(client.execute_command(*command))


def _answers(port: int, *command: str) -> str:
    """As _query, but "" from a node that does not answer (dead, paused, still starting)."""
    try:
        return _query(port, *command)
    except redis.RedisError:
        return ""


def _info_field(info: str, field: str) -> str | None:
    """A field of a raw `name:value` reply (CLUSTER INFO)."""
    for line in info.splitlines():
        name, _, value = line.partition(":")
        if name == field:
            return value.strip()
    return None


def _replica_in_sync(port: int) -> bool:
    try:
        with _client(port) as client:
            return client.info("replication").get("master_link_status") == "up"
    except redis.RedisError:
        return False


class _Processes:
    """redis-server processes with their logs in one temp dir, and waiting with clear errors."""

    def __init__(self, prefix: str) -> None:
        self.binary = os.environ.get("REDIS_SERVER_BIN") or redis_server_binary()
        self.dir = Path(tempfile.mkdtemp(prefix=prefix))
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def spawn(self, port: int, *args: str) -> None:
        self.procs[port] = subprocess.Popen(
            [*args, "--logfile", str(self.log(port))],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )

    def server(self, port: int, *options: str) -> None:
        self.spawn(
            port,
            self.binary,
            "--port",
            str(port),
            "--bind",
            HOST,
            "--save",
            "",
            "--appendonly",
            "no",
            # Replicas sync at once (the default waits 5 s for more replicas to share one transfer).
            "--repl-diskless-sync-delay",
            "0",
            "--dir",
            str(self.dir),
            *options,
        )

    def log(self, port: int) -> Path:
        return self.dir / f"redis-{port}.log"

    def alive(self, port: int) -> bool:
        proc = self.procs.get(port)
        return proc is not None and proc.poll() is None

    def wait(self, condition: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {what} within {timeout_s} s\n{self.log_tails()}")
            time.sleep(0.05)

    def wait_listening(self, ports: list[int]) -> None:
        def listening_or_dead() -> bool:
            return all(port_open(HOST, port) or not self.alive(port) for port in ports)

        self.wait(listening_or_dead, 10.0, f"redis-server on ports {ports}")
        dead = [port for port in ports if not self.alive(port)]
        if dead:
            raise RuntimeError(f"redis-server on ports {dead} exited\n{self.log_tails()}")

    def log_tails(self, lines: int = 8) -> str:
        tails = []
        for port in self.procs:
            path = self.log(port)
            text = path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else []
            tails.append(f"--- port {port} ({'alive' if self.alive(port) else 'dead'}):\n" + "\n".join(text))
        return "\n".join(tails)

    def signal(self, port: int, sig: signal.Signals) -> None:
        self.procs[port].send_signal(sig)

    def kill(self, port: int) -> None:
        proc = self.procs[port]
        proc.send_signal(signal.SIGCONT)  # a paused process would hold its port until resumed
        proc.kill()
        proc.wait(10)

    def stop(self) -> None:
        for port in list(self.procs):
            if self.alive(port):
                self.kill(port)
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass(frozen=True)
class ClusterNode:
    """One line of CLUSTER NODES."""

    id: str
    port: int
    flags: frozenset[str]
    master_id: str | None
    slots: tuple[tuple[int, int], ...]

    @property
    def is_master(self) -> bool:
        return "master" in self.flags and "fail" not in self.flags

    @property
    def is_replica(self) -> bool:
        return "slave" in self.flags and "fail" not in self.flags

    def owns(self, slot: int) -> bool:
        return any(low <= slot <= high for low, high in self.slots)


def _parse_nodes(text: str) -> list[ClusterNode]:
    nodes = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        address = fields[1].split("@")[0]  # ip:port@cport[,hostname]
        slots = []
        for spec in fields[8:]:
            if spec.startswith("["):  # a slot being migrated, not owned
                continue
            low, _, high = spec.partition("-")
            slots.append((int(low), int(high or low)))
        nodes.append(
            ClusterNode(
                id=fields[0],
                port=int(address.rpartition(":")[2]),
                flags=frozenset(fields[2].split(",")),
                master_id=None if fields[3] == "-" else fields[3],
                slots=tuple(slots),
            )
        )
    return nodes


class RedisClusterServer:
    """A Redis Cluster of `masters` masters with one replica each, on 127.0.0.1."""

    def __init__(self, masters: int = 3) -> None:
        self._processes = _Processes("wacoder-cluster-")
        ports = _free_ports(4 * masters)
        self.ports = ports[: 2 * masters]
        # The bus port of each node, chosen too: the default (port + 10000) may be out of range.
        self._bus_ports = ports[2 * masters :]

    @property
    def url(self) -> str:
        """One node's URL, as a deployment would give it (cluster mode has db 0 only)."""
        return f"redis://{HOST}:{self.ports[0]}/0"

    def start(self) -> None:
        cli = shutil.which("redis-cli") or ""
        if not cli:
            pytest.skip("redis-cli is not installed (needed to create the cluster)")
        for port, bus_port in zip(self.ports, self._bus_ports, strict=True):
            self._processes.server(
                port,
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                str(bus_port),
                "--cluster-config-file",
                str(self._processes.dir / f"nodes-{port}.conf"),
                "--cluster-node-timeout",
                "2000",
            )
        self._processes.wait_listening(self.ports)
        addresses = [f"{HOST}:{port}" for port in self.ports]
        created = subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "1", "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if created.returncode != 0:
            raise RuntimeError(
                f"redis-cli --cluster create failed:\n{created.stdout}\n{created.stderr}\n"
                f"{self._processes.log_tails()}"
            )
        self._processes.wait(self._ready, 30.0, "cluster with every node ok and every replica in sync")

    def nodes(self) -> list[ClusterNode]:
        """The cluster as a live node sees it."""
        for port in self.ports:
            if self._processes.alive(port):
                text = _answers(port, "CLUSTER", "NODES")
                if text:
                    return _parse_nodes(text)
        raise RuntimeError(f"no cluster node answers\n{self._processes.log_tails()}")

    def masters(self) -> list[int]:
        return [node.port for node in self.nodes() if node.is_master and node.slots]

    def replicas(self) -> list[int]:
        return [node.port for node in self.nodes() if node.is_replica]

    def replicas_of(self, master_port: int) -> list[int]:
        nodes = self.nodes()
        master = next(node for node in nodes if node.port == master_port)
        return [node.port for node in nodes if node.is_replica and node.master_id == master.id]

    def master_for_key(self, key: str) -> int:
        slot = int(_query(self.masters()[0], "CLUSTER", "KEYSLOT", key))
        return next(node.port for node in self.nodes() if node.is_master and node.owns(slot))

    def kill(self, port: int) -> None:
        """SIGKILL: no chance to hand anything over, as a crashed machine."""
        self._processes.kill(port)

    def pause(self, port: int) -> None:
        """SIGSTOP: the node is still connected but answers nothing, as a stalled machine."""
        self._processes.signal(port, signal.SIGSTOP)

    def resume(self, port: int) -> None:
        self._processes.signal(port, signal.SIGCONT)

    def wait_failover(self, dead_port: int, timeout_s: float = 15.0) -> None:
        """Until every live node sees the dead master failed and its slots served by another
        (a replica promoted), and says cluster_state:ok."""

        def failed_over() -> bool:
            for port in self._live():
                nodes = _parse_nodes(_answers(port, "CLUSTER", "NODES"))
                dead = [node for node in nodes if node.port == dead_port]
                if not dead or "fail" not in dead[0].flags or dead[0].slots:
                    return False
                if _info_field(_answers(port, "CLUSTER", "INFO"), "cluster_state") != "ok":
                    return False
            return True

        self._processes.wait(failed_over, timeout_s, f"failover of the master on port {dead_port}")

    def log_tails(self) -> str:
        return self._processes.log_tails()

    def stop(self) -> None:
        self._processes.stop()

    def _live(self) -> list[int]:
        return [port for port in self.ports if self._processes.alive(port)]

    def _ready(self) -> bool:
        for port in self._live():
            if _info_field(_answers(port, "CLUSTER", "INFO"), "cluster_state") != "ok":
                return False
            nodes = _parse_nodes(_answers(port, "CLUSTER", "NODES"))
            if (
                len(nodes) != len(self.ports)
                or sum(1 for node in nodes if node.is_replica) != len(self.ports) // 2
            ):
                return False
        return all(_replica_in_sync(port) for port in self.replicas())


class SentinelServer:
    """A master, its replica, and one sentinel watching them as `mymaster`."""

    service_name = "mymaster"

    def __init__(self) -> None:
        self._processes = _Processes("wacoder-sentinel-")
        self.master_port, self.replica_port, self.sentinel_port = _free_ports(3)

    @property
    def url(self) -> str:
        return f"redis+sentinel://{HOST}:{self.sentinel_port}/{self.service_name}"

    def start(self) -> None:
        self._processes.server(self.master_port)
        self._processes.server(self.replica_port, "--replicaof", HOST, str(self.master_port))
        # The sentinel rewrites its config file as it learns the topology: a file of its own.
        config = self._processes.dir / "sentinel.conf"
        config.write_text(
            f"port {self.sentinel_port}\n"
            f"bind {HOST}\n"
            f"dir {self._processes.dir}\n"
            f"sentinel monitor {self.service_name} {HOST} {self.master_port} 1\n"
            # Generous: on a busy machine a master slow to answer for a second must not be taken
            # for down (redis-py refuses a master its sentinel holds down); nothing here fails over.
            f"sentinel down-after-milliseconds {self.service_name} 10000\n"
            f"sentinel failover-timeout {self.service_name} 30000\n"
        )
        self._processes.spawn(self.sentinel_port, self._processes.binary, str(config), "--sentinel")
        self._processes.wait_listening([self.master_port, self.replica_port, self.sentinel_port])
        self._processes.wait(self._ready, 20.0, "sentinel naming the master, and the replica in sync")

    def stop(self) -> None:
        self._processes.stop()

    def _ready(self) -> bool:
        if not _replica_in_sync(self.replica_port):
            return False
        try:
            with _client(self.sentinel_port) as sentinel:
                address = sentinel.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service_name)
        except redis.RedisError:
            return False
        return bool(address) and int(address[1]) == self.master_port


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[RedisClusterServer]:
    server = RedisClusterServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def redis_sentinel() -> Iterator[SentinelServer]:
    server = SentinelServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()
