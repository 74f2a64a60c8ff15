"""What users get while a dependency is away: order kept when the notifier stalls or is briefly
unreachable (and other senders not held behind), progress kept when a reply could not be
handed over, nothing trimmed from a backlog."""

from __future__ import annotations

import itertools
import json
import re
import signal
import time
from collections import defaultdict
from collections.abc import Callable, Iterable

import pytest
import redis
from devtools.stack import Stack
from wacoder import keys

from tests.harness import (
    PROGRESS,
    Conversation,
    RedisServer,
    TwilioSim,
    active_relays,
    inbound,
    inbox_length,
    post_signed,
    user_of,
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


def users_in_one_shard(env: dict[str, str], twilio_sim: TwilioSim, prefix: str) -> list[Conversation]:
    """Two new users whose messages go to the same inbox shard, so that one consumer's lanes
    serve both: "not held behind the other" is then a property of the lanes, not of the shards."""
    by_shard: dict[int, list[str]] = defaultdict(list)
    for n in itertools.count():
        phone = f"+1555{prefix}{n:04d}"
        group = by_shard[keys.shard_of(user_of(env, phone))]
        group.append(phone)
        if len(group) == 2:
            return [Conversation(env, twilio_sim, p) for p in group]
    raise AssertionError("unreachable")


def wait_until_retrying(
    stack: Stack, r: redis.Redis, user: Conversation, sids: Iterable[str], at_least_s: float
) -> None:
    """Until the agent says (in its log) that the hand-off of one of `user`'s messages `sids`
    failed and waits at least `at_least_s` before its next try, so their lane holds still that
    long (or 20 s have passed). Only sets the scene: the tests assert what users receive."""
    wanted = set(sids)
    stream = keys.inbox_stream(keys.shard_of(user_of(stack.env, user.phone)))
    log_path = stack["agent"].log_path
    assert log_path is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        entries = {entry_id for entry_id, fields in r.xrange(stream) if fields.get("sid") in wanted}
        for line in log_path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("entry_id") in entries and record.get("retry_in_s", 0) >= at_least_s:
                return
        time.sleep(0.1)


def arrivals(twilio_sim: TwilioSim, *users: Conversation) -> list[tuple[str, str]]:
    """(phone, text) of every message to `users`, in the order they reached Twilio."""
    phones = {f"whatsapp:{u.phone}": u.phone for u in users}
    return [(phones[m["to"]], m["body"]) for m in twilio_sim.messages() if m["to"] in phones]


def assert_in_order_once_and_bob_not_held(
    twilio_sim: TwilioSim, alice: Conversation, bob: Conversation
) -> None:
    """Alice's /agents, /list, /help answered in order and once each; Bob's /help, sent while her
    lane was held, answered before her lane caught up."""
    replies = alice.next(3, timeout_s=40)
    assert "AutoCoder agents" in replies[0]
    assert "no projects yet" in replies[1]
    assert "Commands" in replies[2]
    [answer] = bob.next(1, timeout_s=40)
    assert "Commands" in answer
    # Once more each, after everything: a duplicate of an earlier reply would come before it.
    alice_last, bob_last = alice.ask("/agents"), bob.ask("/agents")
    order = arrivals(twilio_sim, alice, bob)
    assert [text for phone, text in order if phone == alice.phone] == [*replies, alice_last], order
    assert [text for phone, text in order if phone == bob.phone] == [answer, bob_last], order
    # Bob's lane never waited for Alice's retries: his reply is not after all of hers.
    assert order.index((bob.phone, answer)) < order.index((alice.phone, replies[2])), order


def test_replies_keep_their_order_when_the_notifier_stalls(
    stack: Stack, env: dict[str, str], twilio_sim: TwilioSim, r: redis.Redis
) -> None:
    alice, bob = users_in_one_shard(env, twilio_sim, "991")
    notifier = stack["notifier"].proc
    assert notifier is not None
    notifier.send_signal(signal.SIGSTOP)  # hung: hand-offs to it time out
    try:
        sids = [alice.send(text) for text in ("/agents", "/list", "/help")]
        # Bob writes while Alice's first reply waits out a backoff of seconds: a lane of his
        # own sends his reply as soon as the notifier answers again, before her lane moves.
        wait_until_retrying(stack, r, alice, sids, at_least_s=3.2)
        bob.send("/help")
    finally:
        notifier.send_signal(signal.SIGCONT)

    assert_in_order_once_and_bob_not_held(twilio_sim, alice, bob)


def test_replies_keep_their_order_and_come_once_when_the_notifier_is_briefly_unreachable(
    stack: Stack, env: dict[str, str], twilio_sim: TwilioSim, r: redis.Redis
) -> None:
    """The notifier killed (SIGKILL) right after Alice's first message, restarted later."""
    alice, bob = users_in_one_shard(env, twilio_sim, "992")
    sids = [alice.send("/agents")]
    stack["notifier"].kill()
    try:
        sids += [alice.send("/list"), alice.send("/help")]
        # Alice's lane holds on her first unsent reply; once it waits out the longest backoff
        # (10 s), Bob writes: retried every few seconds, his reply gets out before hers.
        wait_until_retrying(stack, r, alice, sids, at_least_s=10)
        bob.send("/help")
    finally:
        stack["notifier"].start()
        stack["notifier"].wait_ready()

    assert_in_order_once_and_bob_not_held(twilio_sim, alice, bob)


def test_a_failed_hand_off_after_run_still_relays_progress_and_summary(
    new_user: Callable[[], Conversation], stack: Stack, twilio_sim: TwilioSim, r: redis.Redis
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
    found = re.search(r"`(sess_[0-9a-f]+)`", started)
    assert found is not None, started
    session_id = found.group(1)
    summary = alice.wait_progress(rf"Session `{session_id}` in \*relay-check\*", timeout_s=90)
    assert "Tests:" in summary
    # Its progress too, not only the summary: the agents' steps (in a batch of their own, or
    # leading the summary when the session ended before the relay began).
    steps = re.compile(r"^(✅|❌|⏭️) \*\w+\* (done|failed|skipped): ", re.M)
    assert any(steps.search(body) for body in alice.progress), alice.progress
    # All of it after the reply that announced the session.
    bodies = [m["body"] for m in twilio_sim.messages(f"whatsapp:{alice.phone}")]
    announced = bodies.index(started)
    assert not [b for b in bodies[:announced] if PROGRESS.match(b)], bodies
    assert any(f"Session `{session_id}` in" in b for b in bodies[announced + 1 :]), bodies


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
