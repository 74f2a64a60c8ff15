"""Fixtures of the notifier tests: their own redis-server and Twilio simulator (the tests
stop Redis and script Twilio failures, which must not leak into other suites), and the
notifier as a real process with small retry settings so that the suite stays fast."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import grpc
import pytest
import redis
from devtools.stack import Stack
from wacoder.v1 import notifier_pb2, notifier_pb2_grpc

from tests.harness import RedisServer, TwilioSim, service_channel, stack_env, start_stack

# Small, so that exhausting retries and backoff take a fraction of a second.
NOTIFIER_ENV = {
    "NOTIFIER_MAX_ATTEMPTS": "3",
    "NOTIFIER_BACKOFF_BASE_S": "0.05",
    "NOTIFIER_BACKOFF_MAX_S": "0.5",
    "STREAM_CLAIM_IDLE_MS": "2000",
    # Also bounds how long a restarted notifier waits for a dead one's request before asking
    # Twilio whether it arrived (reconciliation).
    "NOTIFIER_TWILIO_TIMEOUT_S": "3",
    "LOG_LEVEL": "INFO",
}


@pytest.fixture(scope="module")
def notifier_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def sim() -> Iterator[TwilioSim]:
    simulator = TwilioSim()
    yield simulator
    simulator.stop()


@pytest.fixture(scope="module")
def env(notifier_redis: RedisServer, sim: TwilioSim) -> dict[str, str]:
    return stack_env(notifier_redis.url, sim.url, **NOTIFIER_ENV)


@pytest.fixture(scope="module")
def stack(env: dict[str, str]) -> Iterator[Stack]:
    running = start_stack(env, services=["notifier"])
    yield running
    running.stop()


@pytest.fixture
def rdb(notifier_redis: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(notifier_redis.url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def notifier(
    stack: Stack, env: dict[str, str], sim: TwilioSim
) -> Iterator[notifier_pb2_grpc.NotifierServiceStub]:
    sim.clear()
    with service_channel(env["NOTIFIER_ADDR"], env) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        yield notifier_pb2_grpc.NotifierServiceStub(channel)
    sim.script([])


def new_phone() -> str:
    """A recipient of its own for each test, so that tests never see each other's messages."""
    return f"whatsapp:+1555{uuid.uuid4().int % 10**7:07d}"


def send(
    stub: notifier_pb2_grpc.NotifierServiceStub,
    to: str,
    body: str,
    key: str | None = None,
    media_urls: list[str] | None = None,
) -> notifier_pb2.SendResponse:
    request = notifier_pb2.SendRequest(
        to=to, body=body, idempotency_key=key or str(uuid.uuid4()), media_urls=media_urls or []
    )
    return stub.Send(request, timeout=5)
