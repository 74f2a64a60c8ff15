"""TWILIO_MESSAGING_SERVICE_SID: the notifier sends through a Messaging Service (Twilio picks the
sender from its pool) instead of one `From` number, and still finds its own messages when it
reconciles after a crash; its pool of senders multiplies the send rate."""

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
RATE, SENDERS = 5, 4  # per sender; the pool's allowance is 20 messages/s


@pytest.fixture(scope="module")
def env(notifier_redis: RedisServer, sim: TwilioSim) -> dict[str, str]:
    return stack_env(
        notifier_redis.url,
        sim.url,
        **NOTIFIER_ENV,
        TWILIO_MESSAGING_SERVICE_SID=SERVICE_SID,
        TWILIO_MESSAGING_SERVICE_SENDERS=str(SENDERS),
        NOTIFIER_SEND_RATE_PER_S=str(RATE),
    )


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


def test_the_pool_sends_at_its_senders_combined_rate(
    notifier: notifier_pb2_grpc.NotifierServiceStub, sim: TwilioSim
) -> None:
    pool_rate = RATE * SENDERS
    time.sleep(1.5)  # the allowance refills after the tests before
    recipients = [new_phone() for _ in range(3 * pool_rate)]
    for to in recipients:
        send(notifier, to, "pooled")
    times = sorted(sim.wait_for(to, timeout_s=20)[0]["received_at"] for to in recipients)
    spread = times[-1] - times[0]
    # A burst of one second's allowance, then the pool's rate: 40 more take 2 s. One sender's
    # rate (5/s) would have taken 11 s.
    assert spread >= (len(times) - pool_rate) / pool_rate - 0.1
    assert spread < (len(times) - pool_rate) / pool_rate + 2.0, "the pool's senders were not all used"
