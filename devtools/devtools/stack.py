"""Starts the platform's services as separate processes, as `make run` and the tests do.

Each service is `python -m <package>.main` reading the shared Settings from its
environment; the stack only decides the environment and watches the processes. A service is
up when its `/readyz` answers 200 (the webhook's on its own port, the others' on their
metrics port).

With `replicas=N` the agent, mcp-bridge and notifier run N processes each: replica 1 keeps the
service's own name, address and ports; replica k is `<service>-k` on free ports. Each process's
environment gives its own listen address in its own `*_ADDR` variable (what it binds) and every
replica of each other service, comma-separated, in theirs (what it dials, round robin: see
`wacoder.grpc.channel`).
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from wacoder.settings import Settings


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    module: str
    # Services of the stack its readiness depends on (Redis aside, which every service needs).
    ready_needs: tuple[str, ...] = ()


# Start order: each service's dependencies come before it.
SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("autocoder", "autocoder.main"),
    ServiceSpec("mcp-bridge", "mcp_bridge.main", ready_needs=("autocoder",)),
    ServiceSpec("notifier", "notifier.main"),
    ServiceSpec("agent", "agent.main"),
    ServiceSpec("webhook", "webhook.main"),
)


# The services that scale out with `replicas`: their address variable and their health/metrics one.
REPLICATED: dict[str, tuple[str, str]] = {
    "agent": ("AGENT_ADDR", "AGENT_METRICS_PORT"),
    "mcp-bridge": ("MCP_BRIDGE_ADDR", "MCP_BRIDGE_METRICS_PORT"),
    "notifier": ("NOTIFIER_ADDR", "NOTIFIER_METRICS_PORT"),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout_s: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def settings_for(env: Mapping[str, str]) -> Settings:
    """The Settings a service started with `env` will see (so the stack knows its ports)."""
    fields = Settings.model_fields
    return Settings(**{k.lower(): v for k, v in env.items() if k.lower() in fields})  # type: ignore[arg-type]


def replica_envs(
    env: Mapping[str, str], services: Iterable[str], replicas: int
) -> dict[str, list[dict[str, str]]]:
    """Per replicated service, the variables of each of its `replicas` replicas' own: its gRPC
    address, its metrics port and REPLICA_ID. Replica 1 keeps what `env` (or the defaults) says;
    the others listen on the same host, on free ports."""
    settings = settings_for(env)
    base = {
        "agent": (settings.agent_addr, settings.agent_metrics_port),
        "mcp-bridge": (settings.mcp_bridge_addr, settings.mcp_bridge_metrics_port),
        "notifier": (settings.notifier_addr, settings.notifier_metrics_port),
    }
    taken = {port for addr, metrics in base.values() for port in (int(addr.rpartition(":")[2]), metrics)}
    taken |= {settings.webhook_port, settings.autocoder_port, settings.autocoder_metrics_port}
    found: dict[str, list[dict[str, str]]] = {}
    for service in services:
        addr_variable, metrics_variable = REPLICATED[service]
        addr, metrics_port = base[service]
        host = addr.rpartition(":")[0]
        found[service] = [
            {addr_variable: addr, metrics_variable: str(metrics_port), "REPLICA_ID": f"{service}-1"}
        ]
        for k in range(2, replicas + 1):
            grpc_port, metrics = _unused_port(taken), _unused_port(taken)
            found[service].append(
                {
                    addr_variable: f"{host}:{grpc_port}",
                    metrics_variable: str(metrics),
                    "REPLICA_ID": f"{service}-{k}",
                }
            )
    return found


def _unused_port(taken: set[int]) -> int:
    """A free port not handed out yet (free_port alone may repeat itself while none is bound)."""
    while (port := free_port()) in taken:
        pass
    taken.add(port)
    return port


def listen_port(spec: ServiceSpec, settings: Settings) -> tuple[str, int]:
    addr = {
        "autocoder": f"{settings.autocoder_host}:{settings.autocoder_port}",
        "mcp-bridge": settings.mcp_bridge_addr,
        "notifier": settings.notifier_addr,
        "agent": settings.agent_addr,
        "webhook": f"{settings.webhook_host}:{settings.webhook_port}",
    }[spec.name]
    host, _, port = addr.rpartition(":")
    return host, int(port)


def health_address(spec: ServiceSpec, settings: Settings) -> tuple[str, int]:
    """Where `spec` serves /livez and /readyz: the webhook on its own port, the others on
    their metrics port."""
    if spec.name == "webhook":
        return _reachable(settings.webhook_host), settings.webhook_port
    port = {
        "autocoder": settings.autocoder_metrics_port,
        "mcp-bridge": settings.mcp_bridge_metrics_port,
        "notifier": settings.notifier_metrics_port,
        "agent": settings.agent_metrics_port,
    }[spec.name]
    return _reachable(settings.metrics_host), port


def _reachable(host: str) -> str:
    # A server bound to every interface is reached on loopback.
    return "127.0.0.1" if host in ("", "0.0.0.0", "::", "[::]") else host


def http_status(host: str, port: int, path: str, timeout_s: float = 1.0) -> int | None:
    """The status of GET http://host:port/path; None when nothing answered in time.

    http.client rather than httpx: no proxy settings from the environment apply to a probe.
    """
    connection = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


class ServiceProcess:
    """One service process: start, wait until it is ready, stop gracefully or kill."""

    def __init__(
        self,
        spec: ServiceSpec,
        env: Mapping[str, str],
        log_dir: Path | None,
        name: str | None = None,
        address: tuple[str, int] | None = None,
    ) -> None:
        self.spec = spec
        # The service's name, or `<service>-k` for its k-th replica (k >= 2).
        self.name = name or spec.name
        self.env = dict(env)
        if address is not None:
            # A process the Settings do not place (the simulator): it listens, and answers
            # /livez and /readyz, at `address`.
            self.host, self.port = self.health_host, self.health_port = address
        else:
            settings = settings_for(env)
            self.host, self.port = listen_port(spec, settings)
            self.health_host, self.health_port = health_address(spec, settings)
        # False when its readiness hangs on a service this stack does not run (the bridge
        # alone, against an AutoCoder a test controls): then waiting for it means /livez.
        self.await_readiness = True
        self.log_path = log_dir / f"{self.name}.log" if log_dir else None
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def probe(self, path: str, timeout_s: float = 1.0) -> int | None:
        """The HTTP status of the service's `path` (/livez, /readyz); None if it did not answer."""
        return http_status(self.health_host, self.health_port, path, timeout_s)

    def start(self) -> None:
        if self.log_path is not None:
            self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.spec.module],
            env={**os.environ, **self.env},
            stdout=self._log,
            stderr=subprocess.STDOUT if self._log else None,
        )

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Until it listens on its port and its /readyz answers 200 (/livez: see await_readiness)."""
        path = "/readyz" if self.await_readiness else "/livez"
        deadline = time.monotonic() + timeout_s
        last: int | None = None
        while time.monotonic() < deadline:
            if not self.alive:
                raise RuntimeError(f"{self.name} exited during start-up{self._log_tail()}")
            if port_open(self.host, self.port) and (last := self.probe(path, timeout_s=3.0)) == 200:
                return
            time.sleep(0.05)
        raise TimeoutError(
            f"{self.name} not ready: {self.host}:{self.port} listening "
            f"{port_open(self.host, self.port)}, {path} on {self.health_host}:{self.health_port} "
            f"answered {last}{self._log_tail()}"
        )

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to clean up."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def _log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return "\n--- last lines of its log ---\n" + "\n".join(tail)


class Stack:
    """The services, in start order (a service's replicas together), sharing one environment
    but for each replica's own address and ports."""

    def __init__(
        self,
        env: Mapping[str, str],
        services: Iterable[str] | None = None,
        log_dir: Path | None = None,
        replicas: int = 1,
    ) -> None:
        if replicas < 1:
            raise ValueError(f"replicas must be at least 1, not {replicas}")
        wanted = set(services) if services is not None else {s.name for s in SERVICES}
        self.env = dict(env)
        specs = [s for s in SERVICES if s.name in wanted]
        own = replica_envs(env, [s.name for s in specs if s.name in REPLICATED], replicas)
        dialled = {
            REPLICATED[service][0]: ",".join(replica[REPLICATED[service][0]] for replica in own[service])
            for service in own
        }
        self.processes: dict[str, ServiceProcess] = {}
        for spec in specs:
            for k, replica in enumerate(own.get(spec.name, [{}]), start=1):
                name = spec.name if k == 1 else f"{spec.name}-{k}"
                process_env = {**env, **dialled, **replica}
                self.processes[name] = ServiceProcess(spec, process_env, log_dir, name)
        for process in self.processes.values():
            process.await_readiness = all(need in wanted for need in process.spec.ready_needs)

    def __getitem__(self, name: str) -> ServiceProcess:
        """A process by name: `agent` is the agent's first replica, `agent-2` its second."""
        return self.processes[name]

    def replicas(self, service: str) -> list[ServiceProcess]:
        """Every process of `service`, replica 1 first."""
        return [p for p in self.processes.values() if p.spec.name == service]

    def start(self) -> None:
        busy = [
            f"{p.name} ({host}:{port})"
            for p in self.processes.values()
            for host, port in {(p.host, p.port), (p.health_host, p.health_port)}
            if port_open(host, port)
        ]
        if busy:
            raise RuntimeError(f"ports already in use: {', '.join(busy)}; is another `make run` running?")
        # Start everything first, then wait: the processes import their libraries in parallel.
        for process in self.processes.values():
            process.start()
        try:
            for process in self.processes.values():
                process.wait_ready()
        except Exception:
            self.stop()
            raise

    def restart(self, name: str) -> None:
        process = self.processes[name]
        process.stop()
        process.start()
        process.wait_ready()

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):
            process.stop()
