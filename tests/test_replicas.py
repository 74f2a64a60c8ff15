"""Two replicas each of the agent, mcp-bridge and notifier (`REPLICAS=2 make run`): each listens
where its environment says, every process dials all replicas of the others (round robin), and
users keep being answered while a bridge replica and a notifier replica are SIGKILLed."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from devtools.stack import REPLICATED, Stack, port_open
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.harness import Conversation, RedisServer, service_channel, start_stack

REPLICAS = 2


@pytest.fixture(scope="module")
def module_redis(own_redis: RedisServer) -> RedisServer:
    return own_redis  # several consumers per stream: a Redis of the module's own


@pytest.fixture(scope="module")
def stack_overrides() -> dict[str, str]:
    return {
        # Outbox entries pending on the killed notifier go to the live one after 3 s, not 15.
        "STREAM_CLAIM_IDLE_MS": "3000",
        "NOTIFIER_BACKOFF_BASE_S": "0.05",
    }


@pytest.fixture(scope="module")
def stack(env: dict[str, str]) -> Iterator[Stack]:
    stack = start_stack(env, replicas=REPLICAS)
    yield stack
    stack.stop()


def events(path: Path | None, event: str) -> int:
    """How many times a process logged `event` (its JSON log lines' "event" field)."""
    assert path is not None
    count = 0
    for line in path.read_text(errors="replace").splitlines():
        try:
            count += json.loads(line).get("event") == event
        except (ValueError, AttributeError):
            continue  # a line that is not one of our JSON log entries
    return count


def test_every_replica_listens_where_its_environment_says_and_is_ready(
    stack: Stack, env: dict[str, str]
) -> None:
    ports: list[int] = []
    for service, (addr_variable, metrics_variable) in REPLICATED.items():
        replicas = stack.replicas(service)
        assert [p.name for p in replicas] == [service, f"{service}-2"]
        assert replicas[0] is stack[service]
        # Replica 1 keeps the address and ports the environment gave the service.
        assert replicas[0].env[addr_variable] == env[addr_variable]
        assert replicas[0].env[metrics_variable] == env[metrics_variable]
        for k, process in enumerate(replicas, start=1):
            assert process.env["REPLICA_ID"] == f"{service}-{k}"
            assert process.env[addr_variable] == f"{process.host}:{process.port}"
            assert process.health_port == int(process.env[metrics_variable])
            assert process.alive and port_open(process.host, process.port)
            assert process.probe("/readyz") == 200
            with service_channel(process.env[addr_variable], env) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            ports += [process.port, process.health_port]
    assert len(ports) == len(set(ports)) == 2 * REPLICAS * len(REPLICATED)

    # Every process dials all replicas of each other service; its own variable is its own address.
    everyone = {
        variable: ",".join(p.env[variable] for p in stack.replicas(service))
        for service, (variable, _) in REPLICATED.items()
    }
    for process in stack.processes.values():
        for service, (variable, _) in REPLICATED.items():
            if service != process.spec.name:
                assert process.env[variable] == everyone[variable], (process.name, variable)


def test_users_are_answered_while_a_bridge_and_a_notifier_replica_are_killed(
    stack: Stack, new_user: Callable[[], Conversation]
) -> None:
    users = [new_user() for _ in range(3)]
    bridges, notifiers = stack.replicas("mcp-bridge"), stack.replicas("notifier")

    # Every replica gets calls: the agents' channels spread them round robin.
    made = 0
    deadline = time.monotonic() + 90
    while not all(events(p.log_path, "tool call") for p in bridges) or not all(
        events(p.log_path, "queued") for p in notifiers
    ):
        assert time.monotonic() < deadline, "calls never reached every replica"
        for user in users:
            made += 1
            assert "Created project" in user.ask(f"/new before-{made}")  # agent -> bridge -> AutoCoder
            assert "AutoCoder agents" in user.ask("/agents")

    stack["mcp-bridge-2"].kill()
    stack["notifier-2"].kill()
    served_by_bridge = events(bridges[0].log_path, "tool call")
    queued_by_notifier = events(notifiers[0].log_path, "queued")

    for round_ in range(3):
        for user in users:
            assert "Created project" in user.ask(f"/new after-{round_}", timeout_s=40)
            assert "AutoCoder agents" in user.ask("/agents", timeout_s=40)
    for user in users:
        listing = user.ask("/list", timeout_s=40)
        assert all(f"after-{round_}" in listing for round_ in range(3))
    # The live replicas served it all.
    assert events(bridges[0].log_path, "tool call") >= served_by_bridge + 3 * len(users)
    assert events(notifiers[0].log_path, "queued") >= queued_by_notifier + 6 * len(users)
    assert not stack["mcp-bridge-2"].alive and not stack["notifier-2"].alive
