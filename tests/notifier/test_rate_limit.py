"""The per-sender send rate: a reservation (GCRA) in Redis shared by every notifier replica."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis
from notifier.rate_limit import SendRateLimiter
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
    # The limiter lets at most burst (= RATE) + RATE * T sends through in any T seconds,
    # so n sends span at least (n - RATE) / RATE seconds (a little slack for clock reads).
    assert times[-1] - times[0] >= (len(times) - RATE) / RATE - 0.1
    window = 2 * RATE + 1
    for first, last in zip(times, times[window - 1 :], strict=False):
        assert last - first >= (window - RATE) / RATE - 0.1


async def test_waiting_sends_reserve_their_slot_once_and_never_poll() -> None:
    """Many recipients waiting for the same sender: each send costs one Redis call, however long
    it waits, and the sends still keep to the rate. (A Redis of its own: its command counts
    are this test's alone.)"""
    server = RedisServer()
    server.start()
    redis = aioredis.from_url(server.url, decode_responses=True)
    limiter = SendRateLimiter(redis, "whatsapp:+15550001111", rate_per_s=20)

    async def send() -> float:
        await limiter.acquire()
        return time.monotonic()

    times = sorted(await asyncio.gather(*(send() for _ in range(60))))

    stats = (await redis.info("commandstats")).get("cmdstat_evalsha", {})
    await redis.aclose()
    server.stop()
    # (A first call may fail with NOSCRIPT: the client then loads the script and calls again.)
    assert stats["calls"] - stats["failed_calls"] == 60, "one reservation per send, no retries"
    # 20 at once (the burst), then one every 50 ms: 40 more take 2 s.
    assert times[-1] - times[0] >= 40 / 20 - 0.1
    assert times[19] - times[0] < 0.5, "the burst goes out at once"
