"""The durable stream consumer (wacoder.streams) against a real Redis: a failing handler is
retried in place so its lane keeps order while other lanes go on, and the history is trimmed
only below what the group has acknowledged."""

from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from wacoder.streams import Fields, KeyedStreamConsumer

from tests.harness import RedisServer

_streams = itertools.count()


@pytest.fixture
async def r(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
def stream() -> str:
    return f"test:stream:{next(_streams)}"


async def wait_until(condition: object, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_a_failing_entry_holds_its_lane_in_order_while_other_lanes_go_on(
    r: aioredis.Redis, stream: str
) -> None:
    handled: dict[str, list[str]] = defaultdict(list)
    order: list[str] = []  # every completion, across lanes
    failures_left = {"a1": 3}  # a1 fails three times, as a stalled notifier would make it

    async def handle(entry_id: str, fields: Fields) -> None:
        body = fields["body"]
        if failures_left.get(body, 0) > 0:
            failures_left[body] -= 1
            raise ConnectionError("notifier unreachable")
        handled[fields["key"]].append(body)
        order.append(body)

    for key, body in [("a", "a1"), ("a", "a2"), ("b", "b1"), ("a", "a3"), ("b", "b2")]:
        await r.xadd(stream, {"key": key, "body": body})
    consumer = KeyedStreamConsumer(
        r,
        stream=stream,
        group="g",
        consumer="c1",
        key_of=lambda f: f["key"],
        handle=handle,
        retry_base_s=0.2,
    )
    running = asyncio.create_task(consumer.run())
    try:
        await wait_until(lambda: len(order) == 5)
    finally:
        consumer.stop()
        await consumer.drain(2)
        await running

    assert handled["a"] == ["a1", "a2", "a3"]  # nothing passed the failing entry
    assert handled["b"] == ["b1", "b2"]
    # b's lane did not wait for a's retries (0.2 + 0.4 + 0.8 s of backoff).
    assert order.index("b2") < order.index("a1")
    assert (await r.xpending(stream, "g"))["pending"] == 0


async def test_the_history_is_trimmed_only_below_what_was_acknowledged(
    r: aioredis.Redis, stream: str
) -> None:
    release = asyncio.Event()
    done: list[str] = []

    async def handle(entry_id: str, fields: Fields) -> None:
        if fields["key"] == "slow":
            await release.wait()
        done.append(fields["body"])

    await r.xadd(stream, {"key": "slow", "body": "first"})
    for i in range(30):
        await r.xadd(stream, {"key": f"k{i % 3}", "body": f"m{i}"})
    consumer = KeyedStreamConsumer(
        r,
        stream=stream,
        group="g",
        consumer="c1",
        key_of=lambda f: f["key"],
        handle=handle,
        claim_idle_ms=1500,  # a heartbeat (and so a trim) every 0.5 s
        retain=5,
    )
    running = asyncio.create_task(consumer.run())
    try:
        await wait_until(lambda: len(done) == 30)
        await asyncio.sleep(1.5)  # a few heartbeats
        # The oldest entry is still being handled: nothing at or after it may go.
        assert await r.xlen(stream) == 31
        release.set()
        await wait_until(lambda: len(done) == 31)
        await asyncio.sleep(1.5)
        assert await r.xlen(stream) == 5  # now the cap applies
    finally:
        consumer.stop()
        await consumer.drain(2)
        await running
