"""What users get while a dependency is away: order kept when the notifier stalls, progress
kept when a reply could not be handed over, nothing trimmed from a backlog."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable

import pytest
import redis
from devtools.stack import Stack
from wacoder import keys

from tests.harness import (
    Conversation,
    RedisServer,
    TwilioSim,
    active_relays,
    inbound,
    inbox_length,
    post_signed,
)


@pytest.fixture(scope="module")
def module_redis(own_redis: RedisServer) -> RedisServer:
    return own_redis  # this module counts the inbox stream


@pytest.fixture(scope="module")
def stack_overrides() -> dict[str, str]:
    return {"INBOX_MAXLEN": "5", "STREAM_CLAIM_IDLE_MS": "3000"}


@pytest.fixture
def r(env: dict[str, str]) -> redis.Redis:
    return redis.Redis.from_url(env["REDIS_URL"], decode_responses=True)


def test_replies_keep_their_order_when_the_notifier_stalls(
    new_user: Callable[[], Conversation], stack: Stack, twilio_sim: TwilioSim
) -> None:
    alice, bob = new_user(), new_user()
    notifier = stack["notifier"].proc
    assert notifier is not None
    notifier.send_signal(signal.SIGSTOP)  # hung: hand-offs to it time out
    try:
        for text in ("/agents", "/list", "/help"):
            alice.send(text)
            time.sleep(0.3)
        time.sleep(4)
    finally:
        notifier.send_signal(signal.SIGCONT)
    bob.send("/help")

    replies = alice.next(3, timeout_s=40)
    assert "AutoCoder agents" in replies[0]
    assert "no projects yet" in replies[1]
    assert "Commands" in replies[2]
    # Bob's lane never waited for Alice's retries.
    assert "Commands" in bob.next(1)[0]


def test_a_failed_hand_off_after_run_still_relays_progress_and_summary(
    new_user: Callable[[], Conversation], stack: Stack, r: redis.Redis
) -> None:
    alice = new_user()
    alice.ask("/new relay-check")
    stack["notifier"].stop()
    try:
        alice.send("/run build a REST API for notes")
        # The agent computes and commits the reply, then cannot hand it over.
        deadline = time.monotonic() + 20
        while not active_relays(r) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stack["notifier"].start()
        stack["notifier"].wait_ready()
    started = alice.next(1, timeout_s=40)[0]
    assert "Started session" in started
    session_id = re.search(r"`(sess_[0-9a-f]+)`", started).group(1)
    summary = alice.wait_progress(rf"Session `{session_id}` in \*relay-check\*", timeout_s=90)
    assert "Tests:" in summary


def test_a_backlog_beyond_the_inbox_cap_is_answered_in_full(
    new_user: Callable[[], Conversation],
    stack: Stack,
    env: dict[str, str],
    twilio_sim: TwilioSim,
    r: redis.Redis,
) -> None:
    """INBOX_MAXLEN=5, 250 messages while the agent is down: none trimmed, all answered."""
    users = [new_user() for _ in range(5)]
    stack["agent"].stop()
    try:
        for i in range(50):
            for n, user in enumerate(users):
                form = inbound(user.phone, "/agents", f"SMbacklog{n:02d}{i:03d}" + "0" * 20)
                assert post_signed(env, "/webhook/whatsapp", form).status_code == 200
        assert inbox_length(r) >= 250
    finally:
        stack["agent"].start()
        stack["agent"].wait_ready()
    for user in users:
        twilio_sim.wait_for(f"whatsapp:{user.phone}", 50, timeout_s=120)

    # Once handled, each shard's history is cut back to the cap.
    def longest() -> int:
        return max(r.xlen(keys.inbox_stream(shard)) for shard in range(keys.SHARDS))

    deadline = time.monotonic() + 20
    while longest() > 5 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert longest() <= 5
