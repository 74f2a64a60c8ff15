"""The per-sender send rate: a token bucket in Redis shared by every notifier replica."""

from __future__ import annotations

import time

import pytest
from wacoder.v1 import notifier_pb2_grpc

from tests.harness import RedisServer, TwilioSim, stack_env
from tests.notifier.conftest import NOTIFIER_ENV, new_phone, send

RATE = 5


@pytest.fixture(scope="module")
def env(notifier_redis: RedisServer, sim: TwilioSim) -> dict[str, str]:
    return stack_env(notifier_redis.url, sim.url, **NOTIFIER_ENV, NOTIFIER_SEND_RATE_PER_S=str(RATE))


def test_sends_keep_to_the_sender_rate(
    notifier: notifier_pb2_grpc.NotifierServiceStub, sim: TwilioSim
) -> None:
    # Warm up first (the first send imports the client's API modules, which would make the
    # first message's arrival lag behind its token), then let the bucket fill up again.
    warm = new_phone()
    send(notifier, warm, "warm up")
    sim.wait_for(warm)
    time.sleep(1.0 + 1 / RATE)
    recipients = [new_phone() for _ in range(3 * RATE)]
    for to in recipients:
        send(notifier, to, "rate me")
    times = sorted(sim.wait_for(to, timeout_s=15)[0]["received_at"] for to in recipients)
    # A token bucket lets at most burst (= RATE) + RATE * T sends through in any T seconds,
    # so n sends span at least (n - RATE) / RATE seconds (a little slack for clock reads).
    assert times[-1] - times[0] >= (len(times) - RATE) / RATE - 0.1
    window = 2 * RATE + 1
    for first, last in zip(times, times[window - 1 :], strict=False):
        assert last - first >= (window - RATE) / RATE - 0.1
