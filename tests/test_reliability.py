"""Nothing accepted is lost: Twilio replays, a dead agent, a dead Redis, status callbacks.
The chaos test (replicas kill -9'd at random while 20 users write) is in test_scale_out.py."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest
import redis
from devtools.stack import Stack
from wacoder import keys

from tests.harness import (
    Conversation,
    RedisServer,
    TwilioSim,
    accepted,
    inbound,
    post_signed,
    user_of,
)


@pytest.fixture(scope="module")
def module_redis(own_redis: RedisServer) -> RedisServer:
    return own_redis  # this module stops and restarts Redis


@pytest.fixture(scope="module")
def stack_overrides() -> dict[str, str]:
    return {
        "STREAM_CLAIM_IDLE_MS": "3000",
        "NOTIFIER_BACKOFF_BASE_S": "0.05",
    }


@pytest.fixture
def r(env: dict[str, str]) -> redis.Redis:
    return redis.Redis.from_url(env["REDIS_URL"], decode_responses=True)


@pytest.fixture
def user(new_user: Callable[[], Conversation]) -> Conversation:
    return new_user()


def test_a_replayed_request_is_answered_once(
    user: Conversation, env: dict[str, str], twilio_sim: TwilioSim
) -> None:
    form = inbound(user.phone, "/help", "SMreplay000000000000000000000001")
    answers = [post_signed(env, "/webhook/whatsapp", form) for _ in range(5)]

    assert [a.status_code for a in answers] == [200] * 5
    assert all(a.text.endswith("<Response/>") for a in answers)
    user.next(1)
    time.sleep(2)
    assert len(twilio_sim.messages(f"whatsapp:{user.phone}")) == 1


def test_a_message_sent_while_the_agent_is_down_is_answered_when_it_is_back(
    user: Conversation, stack: Stack, r: redis.Redis, env: dict[str, str]
) -> None:
    stack["agent"].stop()
    try:
        sid = user.send("/agents")  # answered 200: the webhook stored it in the agent's inbox itself
        assert accepted(r, env, user.phone, sid)
    finally:
        stack["agent"].start()
        stack["agent"].wait_ready()
    assert "AutoCoder agents" in user.next(1)[0]


def test_redis_down_is_a_503_and_health_says_why(
    user: Conversation, stack: Stack, env: dict[str, str], module_redis: RedisServer
) -> None:
    module_redis.stop()
    try:
        answer = post_signed(
            env, "/webhook/whatsapp", inbound(user.phone, "/help", "SMredisdown0000000000000000001")
        )
        assert answer.status_code == 503  # Twilio retries a 5xx
        health = httpx.get(env["PUBLIC_BASE_URL"] + "/health", timeout=10)
        assert health.status_code == 503
        assert health.json()["checks"]["redis"] == "unavailable"
    finally:
        module_redis.start()
    # Twilio's retry of the same message, once Redis is back, is accepted and answered.
    deadline = time.monotonic() + 30
    while True:
        answer = post_signed(
            env, "/webhook/whatsapp", inbound(user.phone, "/help", "SMredisdown0000000000000000001")
        )
        if answer.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert answer.status_code == 200
    assert "Commands" in user.next(1, timeout_s=40)[0]


def test_status_callbacks_are_recorded_and_unsigned_ones_refused(
    user: Conversation, env: dict[str, str], twilio_sim: TwilioSim, r: redis.Redis
) -> None:
    user.ask("/help")
    [message] = twilio_sim.messages(f"whatsapp:{user.phone}")
    delivery = keys.delivery(user_of(env, user.phone), message["sid"])
    assert r.hget(delivery, "status") == "queued"

    unsigned = httpx.post(
        env["PUBLIC_BASE_URL"] + "/webhook/status",
        data={"MessageSid": message["sid"], "MessageStatus": "read"},
    )
    assert unsigned.status_code == 403
    assert r.hget(delivery, "status") == "queued"

    for status in ("sent", "delivered", "read", "sent"):  # a late "sent" must not undo "read"
        form = {
            "MessageSid": message["sid"],
            "MessageStatus": status,
            "AccountSid": env["TWILIO_ACCOUNT_SID"],
            "To": f"whatsapp:{user.phone}",
        }
        assert post_signed(env, "/webhook/status", form).status_code == 204
    assert r.hget(delivery, "status") == "read"

    failed = {
        "MessageSid": message["sid"],
        "MessageStatus": "undelivered",
        "ErrorCode": "30008",
        "To": f"whatsapp:{user.phone}",
    }
    assert post_signed(env, "/webhook/status", failed).status_code == 204
    # Twilio always says whom the message was for; without it there is nothing to record.
    nobody = {"MessageSid": message["sid"], "MessageStatus": "read"}
    assert post_signed(env, "/webhook/status", nobody).status_code == 400
