"""What the notifier promises through failures: kill -9 and SIGTERM with messages queued and
in flight (exactly once, thanks to reconciliation with Twilio's Messages list), a replica
taking over a dead one's entries, delivery statuses, the 24-hour window (63016), and Redis
going away."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

import grpc
import httpx
import pytest
import redis
import redis.asyncio as aioredis
from devtools.stack import SERVICES, ServiceProcess, Stack
from wacoder import delivery, keys
from wacoder.v1 import notifier_pb2_grpc

from tests.harness import HASH_SALT, RedisServer, TwilioSim, user_of
from tests.notifier.conftest import new_phone, send


def record_status(url: str, form: Mapping[str, str]) -> None:
    async def call() -> None:
        client = aioredis.from_url(url, decode_responses=True)
        try:
            await delivery.record_status(client, form, HASH_SALT)
        finally:
            await client.aclose()

    asyncio.run(call())


def hashed(to: str) -> str:
    return user_of({"PHONE_HASH_SALT": HASH_SALT}, to)


def outside_window_total(rdb: redis.Redis) -> int:
    return sum(int(rdb.get(keys.outside_window_counter(shard)) or 0) for shard in range(keys.SHARDS))


def slow_twilio(sim: TwilioSim, delay_s: float) -> None:
    """Every Messages request takes `delay_s`, so that a kill finds requests in flight."""
    httpx.post(f"{sim.url}/_sim/script", json={"responses": [], "always": None, "delay_s": delay_s})


def queue_for_three(notifier: notifier_pb2_grpc.NotifierServiceStub, count: int) -> dict[str, list[str]]:
    expected: dict[str, list[str]] = {new_phone(): [] for _ in range(3)}
    for i in range(count):
        for to, bodies in expected.items():
            bodies.append(f"{to[-4:]} #{i}")
            send(notifier, to, bodies[-1])
    return expected


def first_occurrences(bodies: list[str]) -> list[str]:
    seen: list[str] = []
    for body in bodies:
        if body not in seen:
            seen.append(body)
    return seen


def test_kill_9_with_messages_queued_and_in_flight_loses_nothing(
    notifier: notifier_pb2_grpc.NotifierServiceStub, stack: Stack, sim: TwilioSim
) -> None:
    slow_twilio(sim, 0.1)
    expected = queue_for_three(notifier, 10)
    time.sleep(0.35)
    stack["notifier"].kill()
    sent_before = sum(len(sim.messages(to)) for to in expected)
    assert 0 < sent_before < 30, "the kill should land mid-way"
    sim.script([])
    stack["notifier"].start()
    stack["notifier"].wait_ready()

    duplicates = 0
    for to, bodies in expected.items():
        got = [m["body"] for m in sim.wait_for(to, count=len(bodies), timeout_s=20)]
        time.sleep(0.2)
        got = [m["body"] for m in sim.messages(to)]
        assert first_occurrences(got) == bodies, "none lost, order kept"
        duplicates += len(got) - len(bodies)
    # A request Twilio accepted while the process died before it could record it is found
    # by reconciliation after the restart, not sent again.
    print(f"kill -9 duplicates: {duplicates}")
    assert duplicates == 0


def test_kill_9_while_twilio_is_accepting_reconciles_instead_of_resending(
    notifier: notifier_pb2_grpc.NotifierServiceStub, stack: Stack, sim: TwilioSim, rdb: redis.Redis
) -> None:
    to = new_phone()
    slow_twilio(sim, 1.5)
    reply = send(notifier, to, "exactly once, please")
    deadline = time.monotonic() + 10
    while not [a for a in sim.attempts() if a["to"] == to] and time.monotonic() < deadline:
        time.sleep(0.02)
    # The POST is at Twilio, its 201 not yet back: the process dies now.
    stack["notifier"].kill()
    sim.script([])
    [message] = sim.wait_for(to, timeout_s=5)  # Twilio finishes accepting it regardless
    stack["notifier"].start()
    stack["notifier"].wait_ready()

    outbox_id = reply.outbox_ids[0]
    user = hashed(to)
    shard = keys.shard_of(user)
    deadline = time.monotonic() + 20
    while (
        rdb.hget(keys.delivery(user, message["sid"]), "outbox_id") != outbox_id
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    record = rdb.hgetall(keys.delivery(user, message["sid"]))
    assert record.get("outbox_id") == outbox_id, "recorded with the sid Twilio gave the first request"
    assert record["status"] == "queued"
    assert rdb.get(keys.outbox_sent(shard, outbox_id)) == message["sid"]
    assert not rdb.exists(keys.outbox_in_flight(shard, outbox_id))
    assert rdb.xpending(keys.outbox_stream(shard), keys.OUTBOX_GROUP)["pending"] == 0
    time.sleep(0.3)
    assert len(sim.messages(to)) == 1, "delivered exactly once"
    assert len([a for a in sim.attempts() if a["to"] == to]) == 1, "never posted again"


def test_sigterm_finishes_in_flight_sends_and_resumes_the_rest(
    notifier: notifier_pb2_grpc.NotifierServiceStub, stack: Stack, sim: TwilioSim
) -> None:
    slow_twilio(sim, 0.1)
    expected = queue_for_three(notifier, 8)
    time.sleep(0.25)
    stack.restart("notifier")
    sim.script([])
    for to, bodies in expected.items():
        sim.wait_for(to, count=len(bodies), timeout_s=20)
        time.sleep(0.2)
        assert [m["body"] for m in sim.messages(to)] == bodies, "graceful: none lost, none twice"


def test_a_replacement_consumer_claims_a_dead_consumers_entries(
    notifier: notifier_pb2_grpc.NotifierServiceStub,
    stack: Stack,
    sim: TwilioSim,
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    slow_twilio(sim, 0.1)
    expected = queue_for_three(notifier, 5)
    time.sleep(0.2)
    stack["notifier"].kill()
    sim.script([])
    # Another replica (another name, e.g. a new pod) on the same address.
    spec = next(s for s in SERVICES if s.name == "notifier")
    replacement = ServiceProcess(spec, {**env, "REPLICA_ID": f"replacement-{uuid.uuid4().hex[:6]}"}, tmp_path)
    replacement.start()
    try:
        replacement.wait_ready()
        for to, bodies in expected.items():
            got = [m["body"] for m in sim.wait_for(to, count=len(bodies), timeout_s=20)]
            assert set(got) == set(bodies)
    finally:
        replacement.stop()
        stack["notifier"].start()
        stack["notifier"].wait_ready()


def test_statuses_only_move_forward(
    notifier: notifier_pb2_grpc.NotifierServiceStub,
    sim: TwilioSim,
    rdb: redis.Redis,
    notifier_redis: RedisServer,
) -> None:
    to = new_phone()
    user = hashed(to)
    send(notifier, to, "status me")
    [message] = sim.wait_for(to)
    sid = message["sid"]
    for status, expected in (
        ("sent", "sent"),
        ("delivered", "delivered"),
        ("sent", "delivered"),
        ("queued", "delivered"),
        ("read", "read"),
        ("delivered", "read"),
        ("failed", "read"),
    ):
        record_status(notifier_redis.url, {"MessageSid": sid, "MessageStatus": status, "To": to})
        assert rdb.hget(keys.delivery(user, sid), "status") == expected, f"after {status}"
    assert rdb.hget(keys.delivery(user, sid), "idempotency_key")

    # A callback before the notifier's own record (or for an unknown message) still counts.
    unknown = "SM" + uuid.uuid4().hex
    record_status(notifier_redis.url, {"MessageSid": unknown, "MessageStatus": "sent", "To": to})
    assert rdb.hget(keys.delivery(user, unknown), "status") == "sent"
    assert rdb.ttl(keys.delivery(user, unknown)) > 0
    record_status(notifier_redis.url, {"MessageSid": "", "MessageStatus": "sent", "To": to})  # ignored


def test_63016_by_status_callback_parks_and_next_send_delivers_it_first(
    notifier: notifier_pb2_grpc.NotifierServiceStub,
    sim: TwilioSim,
    rdb: redis.Redis,
    notifier_redis: RedisServer,
) -> None:
    to = new_phone()
    user = hashed(to)
    send(notifier, to, "your build finished")
    [message] = sim.wait_for(to)
    assert rdb.hget(keys.delivery(user, message["sid"]), "to_hash") == user
    before = outside_window_total(rdb)
    form = {"MessageSid": message["sid"], "MessageStatus": "undelivered", "ErrorCode": "63016", "To": to}
    record_status(notifier_redis.url, form)
    record_status(notifier_redis.url, form)  # Twilio may call twice: parked once, counted once
    assert rdb.llen(keys.outbox_parked(user)) == 1
    assert outside_window_total(rdb) == before + 1
    assert rdb.ttl(keys.outbox_parked(user)) > 0

    send(notifier, to, "hello again")  # the user wrote, the agent answers
    got = sim.wait_for(to, count=3)
    assert [m["body"] for m in got] == ["your build finished", "your build finished", "hello again"]
    assert rdb.llen(keys.outbox_parked(user)) == 0


def test_63016_callback_before_the_notifiers_record_still_parks(
    rdb: redis.Redis, notifier_redis: RedisServer
) -> None:
    sid = "SM" + uuid.uuid4().hex
    to = new_phone()
    user = hashed(to)
    form = {"MessageSid": sid, "MessageStatus": "failed", "ErrorCode": "63016", "To": to}
    record_status(notifier_redis.url, form)
    assert rdb.llen(keys.outbox_parked(user)) == 0
    script_keys, argv = delivery.record_accepted_args(user, sid, {"to_hash": user, "payload": '{"v":"1"}'})
    rdb.eval(delivery.APPLY_SCRIPT, len(script_keys), *script_keys, *argv)
    assert rdb.hget(keys.delivery(user, sid), "status") == "failed"
    assert rdb.lrange(keys.outbox_parked(user), 0, -1) == ['{"v":"1"}']


def test_63016_at_send_time_parks_and_next_send_delivers_it_first(
    notifier: notifier_pb2_grpc.NotifierServiceStub, sim: TwilioSim, rdb: redis.Redis
) -> None:
    to = new_phone()
    before = outside_window_total(rdb)
    sim.script([{"status": 400, "code": 63016, "message": "Outside the allowed window"}])
    send(notifier, to, "parked one")
    deadline = time.monotonic() + 10
    while outside_window_total(rdb) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert outside_window_total(rdb) == before + 1
    assert sim.messages(to) == []
    send(notifier, to, "fresh reply")
    assert [m["body"] for m in sim.wait_for(to, count=2)] == ["parked one", "fresh reply"]


def test_redis_down_send_is_unavailable_and_the_worker_recovers(
    notifier: notifier_pb2_grpc.NotifierServiceStub, stack: Stack, sim: TwilioSim, notifier_redis: RedisServer
) -> None:
    notifier_redis.stop()
    try:
        with pytest.raises(grpc.RpcError) as err:
            send(notifier, new_phone(), "no redis")
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        time.sleep(1.0)
        assert stack["notifier"].alive
    finally:
        notifier_redis.start()
    to = new_phone()
    send(notifier, to, "back again")
    assert [m["body"] for m in sim.wait_for(to, timeout_s=15)] == ["back again"]
