"""The notifier as a process against a real Redis and the Twilio simulator: sending, the
idempotency of Send, retries and dead letters, splitting, and per-recipient order."""

from __future__ import annotations

import json
import re
import time
import uuid

import grpc
import pytest
import redis
from wacoder import keys
from wacoder.v1 import notifier_pb2, notifier_pb2_grpc

from tests.harness import BOT_NUMBER, HASH_SALT, TwilioSim, user_of
from tests.notifier.conftest import NOTIFIER_ENV, new_phone, send


def dead_letters_for(rdb: redis.Redis, key: str, timeout_s: float = 10.0) -> list[dict[str, str]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = [
            f
            for shard in range(keys.SHARDS)
            for _id, f in rdb.xrange(keys.dead_letters(shard))
            if f["idempotency_key"] == key
        ]
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"no dead letter for {key}")


def test_send_makes_one_rest_call_with_twilio_fields(
    notifier: notifier_pb2_grpc.NotifierServiceStub, sim: TwilioSim, env: dict[str, str], rdb: redis.Redis
) -> None:
    to = new_phone()
    key = str(uuid.uuid4())
    reply = send(notifier, to, "hello *there*", key, media_urls=["https://example.com/a.png"])
    assert not reply.duplicate and len(reply.outbox_ids) == 1

    [message] = sim.wait_for(to)
    # The sim refuses a wrong SID:token, so a recorded message proves the basic auth.
    assert message["from"] == BOT_NUMBER
    assert message["body"] == "hello *there*"
    assert message["status_callback"] == env["PUBLIC_BASE_URL"] + "/webhook/status"
    assert message["media_urls"] == ["https://example.com/a.png"]
    time.sleep(0.3)
    assert len(sim.messages(to)) == 1

    record = rdb.hgetall(keys.delivery(user_of(env, to), message["sid"]))
    assert record["status"] == "queued"
    assert record["idempotency_key"] == key and record["outbox_id"] == reply.outbox_ids[0]
    assert record["to_hash"] and "+1555" not in json.dumps(record)
    assert 0 < rdb.ttl(keys.delivery(user_of(env, to), message["sid"])) <= 7 * keys.DAY_S
    # Delivered entries leave the outbox: nothing pending, nothing stored in clear.
    outbox = keys.outbox_stream(keys.shard_of(user_of(env, to)))
    assert rdb.xpending(outbox, keys.OUTBOX_GROUP)["pending"] == 0


def test_outbox_stores_bodies_encrypted(
    notifier: notifier_pb2_grpc.NotifierServiceStub, sim: TwilioSim, rdb: redis.Redis
) -> None:
    to = new_phone()
    sim.script([], always={"status": 500, "delay_s": 0.3})
    send(notifier, to, "secret plans")
    time.sleep(0.1)
    entries = rdb.xrange(keys.outbox_stream(keys.shard_of(user_of({"PHONE_HASH_SALT": HASH_SALT}, to))))
    sim.script([])
    assert entries, "the entry should still be in the outbox while Twilio fails"
    stored = json.dumps(entries)
    assert "secret plans" not in stored and to not in stored


def test_invalid_arguments(notifier: notifier_pb2_grpc.NotifierServiceStub) -> None:
    for to, body in (("", "hi"), (new_phone(), "")):
        with pytest.raises(grpc.RpcError) as err:
            notifier.Send(notifier_pb2.SendRequest(to=to, body=body, idempotency_key="k"), timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_same_idempotency_key_five_times_sends_once(
    notifier: notifier_pb2_grpc.NotifierServiceStub, sim: TwilioSim
) -> None:
    to = new_phone()
    key = str(uuid.uuid4())
    replies = [send(notifier, to, "once only", key) for _ in range(5)]
    assert [r.duplicate for r in replies] == [False, True, True, True, True]
    assert all(list(r.outbox_ids) == list(replies[0].outbox_ids) for r in replies)
    sim.wait_for(to)
    time.sleep(0.5)
    assert len(sim.messages(to)) == 1


def test_retries_429_with_retry_after_then_500_then_delivers_once(
    notifier: notifier_pb2_grpc.NotifierServiceStub, sim: TwilioSim
) -> None:
    to = new_phone()
    sim.script([{"status": 429, "code": 20429, "headers": {"Retry-After": "1"}}, {"status": 500}])
    send(notifier, to, "eventually")
    sim.wait_for(to, timeout_s=10)
    time.sleep(0.3)
    assert len(sim.messages(to)) == 1
    tries = [a["at"] for a in sim.attempts() if a["to"] == to]
    assert len(tries) == 3
    assert tries[1] - tries[0] >= 1.0, "Retry-After: 1 must be honoured"
    assert tries[2] > tries[1]


def test_always_500_is_dead_lettered_after_max_attempts(
    notifier: notifier_pb2_grpc.NotifierServiceStub, sim: TwilioSim, rdb: redis.Redis
) -> None:
    to = new_phone()
    key = str(uuid.uuid4())
    sim.script([], always={"status": 500})
    send(notifier, to, "never arrives", key)
    [dead] = dead_letters_for(rdb, key)
    sim.script([])
    assert dead["reason"] == "max_attempts" and dead["status"] == "500"
    assert dead["attempts"] == NOTIFIER_ENV["NOTIFIER_MAX_ATTEMPTS"]
    assert len([a for a in sim.attempts() if a["to"] == to]) == int(NOTIFIER_ENV["NOTIFIER_MAX_ATTEMPTS"])
    # Replayable but private: body still encrypted, the phone only as its hash.
    assert "never arrives" not in json.dumps(dead) and to not in json.dumps(dead)
    assert json.loads(dead["payload"])["body"]
    assert sim.messages(to) == []


def test_permanent_4xx_is_dead_lettered_at_once(
    notifier: notifier_pb2_grpc.NotifierServiceStub, sim: TwilioSim, rdb: redis.Redis
) -> None:
    to = new_phone()
    key = str(uuid.uuid4())
    sim.script([{"status": 400, "code": 21211, "message": "Invalid 'To' Phone Number"}])
    send(notifier, to, "bad number", key)
    [dead] = dead_letters_for(rdb, key)
    assert dead["reason"] == "permanent" and dead["error_code"] == "21211" and dead["attempts"] == "1"
    assert len([a for a in sim.attempts() if a["to"] == to]) == 1


def test_long_body_is_split_into_ordered_parts(
    notifier: notifier_pb2_grpc.NotifierServiceStub, sim: TwilioSim
) -> None:
    to = new_phone()
    body = " ".join(f"w{i:04d}" for i in range(584))  # 3,503 characters
    assert len(body) >= 3500
    reply = send(notifier, to, body)
    assert len(reply.outbox_ids) >= 3
    messages = sim.wait_for(to, count=len(reply.outbox_ids))
    assert all(len(m["body"]) <= 1600 for m in messages)
    # Whatever the splitter does with numbering and whitespace, the text comes out whole, in order.
    joined = "".join(re.sub(r"\(\d+/\d+\)", "", m["body"]) for m in messages)
    assert re.sub(r"\s+", "", joined) == re.sub(r"\s+", "", body)


def test_messages_to_one_recipient_arrive_in_order(
    notifier: notifier_pb2_grpc.NotifierServiceStub, sim: TwilioSim
) -> None:
    to, other = new_phone(), new_phone()
    # A few failures on the way must not reorder anything.
    sim.script([{"status": 500}, {"status": 429, "code": 20429}, {"status": 503}])
    for i in range(20):
        send(notifier, to, f"message {i}")
        send(notifier, other, f"other {i}")
    got = sim.wait_for(to, count=20, timeout_s=20)
    assert [m["body"] for m in got] == [f"message {i}" for i in range(20)]
    assert [m["body"] for m in sim.wait_for(other, count=20)] == [f"other {i}" for i in range(20)]
