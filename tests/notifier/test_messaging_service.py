"""TWILIO_MESSAGING_SERVICE_SID: the notifier sends through a Messaging Service (Twilio picks the
sender from its pool) instead of one `From` number, and still finds its own messages when it
reconciles after a crash."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from devtools.stack import Stack
from wacoder.v1 import notifier_pb2_grpc

from tests.harness import RedisServer, TwilioSim, stack_env, start_stack
from tests.notifier.conftest import NOTIFIER_ENV, new_phone, send
from tests.notifier.test_reliability import slow_twilio

SERVICE_SID = "MG" + "a" * 32


@pytest.fixture(scope="module")
def env(notifier_redis: RedisServer, sim: TwilioSim) -> dict[str, str]:
    return stack_env(notifier_redis.url, sim.url, **NOTIFIER_ENV, TWILIO_MESSAGING_SERVICE_SID=SERVICE_SID)


@pytest.fixture(scope="module")
def stack(env: dict[str, str]) -> Iterator[Stack]:
    running = start_stack(env, services=["notifier"])
    yield running
    running.stop()


def test_messages_go_through_the_messaging_service(
    notifier: notifier_pb2_grpc.NotifierServiceStub, sim: TwilioSim
) -> None:
    to = new_phone()
    send(notifier, to, "via the service")
    [message] = sim.wait_for(to)
    assert message["messaging_service_sid"] == SERVICE_SID
    assert message["body"] == "via the service"


def test_a_crash_mid_request_is_reconciled_through_the_service(
    notifier: notifier_pb2_grpc.NotifierServiceStub, sim: TwilioSim, stack: Stack
) -> None:
    to = new_phone()
    slow_twilio(sim, 1.0)
    send(notifier, to, "exactly once")
    time.sleep(0.5)
    stack["notifier"].kill()  # the POST is at Twilio, its answer not back
    sim.script([])
    stack["notifier"].start()
    stack["notifier"].wait_ready()
    sim.wait_for(to, timeout_s=20)
    time.sleep(4)
    assert [m["body"] for m in sim.messages(to)] == ["exactly once"]
