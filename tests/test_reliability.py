"""Nothing accepted is lost: Twilio replays, a dead agent, a dead Redis, status callbacks,
and the chaos test (kill -9 agent and notifier at random while 20 users write)."""

from __future__ import annotations

import asyncio
import random
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable

import httpx
import pytest
import redis
from devtools.stack import Stack
from wacoder import keys
from wacoder.phones import phone_hash

from tests.autocoder.conftest import mcp_client
from tests.harness import (
    PROGRESS,
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


USERS = 20


def runs_a_session(u: int) -> bool:
    # Every fourth user: five coding sessions (each runs its tests in the jail) are what two
    # cores carry alongside the chaos without AutoCoder answering "temporarily unavailable".
    return u % 4 == 0


def script(u: int) -> list[tuple[str, Callable[[str], bool]]]:
    """What user `u` sends, each with how its reply is recognised: a project, a coding
    session (or another command), commands and free text (echoed in "didn't understand")."""
    token = lambda m: f"zq{u:02d}x{m:03d}"  # noqa: E731
    second: tuple[str, Callable[[str], bool]] = (
        (f"/run {token(1)} build a small greeting API", lambda reply: f"Task: {token(1)}" in reply)
        if runs_a_session(u)
        else (token(1), lambda reply: f"didn't understand “{token(1)}”" in reply)
    )
    status: tuple[str, Callable[[str], bool]] = (
        ("/status", lambda reply: reply.startswith(("⏳", "⚙️", "✅", "❌")) and token(1) in reply)
        if runs_a_session(u)
        else ("/status", lambda reply: "No coding session yet" in reply)
    )
    return [
        (f"/new {token(0)}", lambda reply: f"Created project *{token(0)}*" in reply),
        second,
        ("/agents", lambda reply: "AutoCoder agents" in reply),
        (token(3), lambda reply: f"didn't understand “{token(3)}”" in reply),
        ("/list", lambda reply: "Your projects" in reply and token(0) in reply),
        status,
        (token(6), lambda reply: f"didn't understand “{token(6)}”" in reply),
        ("/help", lambda reply: "Commands" in reply),
        (token(8), lambda reply: f"didn't understand “{token(8)}”" in reply),
    ]


def test_chaos_every_accepted_message_is_answered_exactly_once_in_order(
    stack: Stack, env: dict[str, str], twilio_sim: TwilioSim
) -> None:
    """20 users each create a project (five run a coding session), use commands and free text,
    while agent and notifier are kill -9'd at random moments. Every accepted message gets
    exactly one reply, in order; AutoCoder holds exactly one project and one session per user."""
    twilio_sim.clear()
    phones = [f"+1555880{u:04d}" for u in range(USERS)]
    accepted: dict[str, list[Callable[[str], bool]]] = defaultdict(list)
    done = threading.Event()

    def write(u: int) -> None:
        for m, (body, expect) in enumerate(script(u)):
            form = inbound(phones[u], body, f"SMchaos{u:02d}{m:03d}" + "0" * 22)
            for _ in range(50):  # as Twilio would, until it gets an answer
                try:
                    answer = post_signed(env, "/webhook/whatsapp", form)
                except httpx.HTTPError:
                    time.sleep(0.2)
                    continue
                if answer.status_code == 200:
                    accepted[phones[u]].append(expect)
                    break
                time.sleep(0.2)
            time.sleep(random.uniform(0.3, 1.0))  # people type; the chaos needs time to strike

    kills: list[str] = []

    def chaos() -> None:
        rng = random.Random(7)
        while not done.wait(rng.uniform(0.5, 1.5)):
            victim = rng.choice(["agent", "notifier"])
            stack[victim].kill()
            kills.append(victim)
            # As `make run` or Kubernetes would; not waiting: the next kill may come first.
            stack[victim].start()
        for process in (stack["agent"], stack["notifier"]):
            process.wait_ready()

    writers = [threading.Thread(target=write, args=(u,)) for u in range(USERS)]
    killer = threading.Thread(target=chaos)
    killer.start()
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    done.set()
    killer.join()
    assert len(kills) >= 4, kills
    total = sum(len(v) for v in accepted.values())
    assert total == USERS * len(script(0))

    def replies() -> dict[str, list[str]]:
        """Each user's replies, without progress messages (nor the later parts of a long one)."""
        found: dict[str, list[str]] = defaultdict(list)
        progress: dict[str, bool] = {}
        for message in twilio_sim.messages():
            phone, body = message["to"].removeprefix("whatsapp:"), message["body"]
            later_part = re.match(r"\((\d+)/\d+\) ", body) and not body.startswith("(1/")
            progress[phone] = progress.get(phone, False) if later_part else bool(PROGRESS.match(body))
            if not progress[phone]:
                found[phone].append(body)
        return found

    deadline = time.monotonic() + 180
    while sum(map(len, replies().values())) < total and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(5)  # a duplicate would show up now
    got = replies()
    for phone, expectations in accepted.items():
        answers = got[phone]
        assert len(answers) == len(expectations), (
            f"{phone}: {len(answers)} replies (kills: {kills}): {answers}"
        )
        for n, (expect, reply) in enumerate(zip(expectations, answers, strict=True)):
            assert expect(reply), f"{phone}: reply {n} out of order or wrong (kills: {kills}): {reply!r}"

    # The redo of a turn that created something did not create it twice.
    async def count_at_autocoder() -> dict[str, tuple[int, int]]:
        salt = env["PHONE_HASH_SALT"]
        counts = {}
        bearer = {"Authorization": f"Bearer {env['AUTOCODER_API_KEY']}"}
        async with mcp_client(env["AUTOCODER_MCP_URL"], bearer) as session:
            for phone in phones:
                result = await session.call_tool(
                    "list_projects", {}, meta={"caller": phone_hash(phone, salt)}
                )
                projects = (result.structuredContent or {})["projects"]
                counts[phone] = (len(projects), sum(len(p["sessions"]) for p in projects))
        return counts

    expected = {phone: (1, int(runs_a_session(u))) for u, phone in enumerate(phones)}
    assert asyncio.run(count_at_autocoder()) == expected
