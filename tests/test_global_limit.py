"""The global rate limit is exact across users and shards under concurrency (docs/adr/0007, decision
4): the global counter lives in a slot of its own, beside each user's script, and whatever the
user's script refused (a Twilio replay) is counted back. So a burst from many users at once
admits exactly the limit, and replays of an accepted message do not use it up."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import redis
from devtools.stack import Stack
from wacoder import keys, templates

from tests.harness import RedisServer, TwilioSim, accepted, inbound, post_signed, user_of

LIMIT = 12
NOTICE = f"<Message>{templates.RATE_LIMIT}</Message>"


@pytest.fixture(scope="module")
def module_redis(own_redis: RedisServer) -> RedisServer:
    return own_redis  # the global counter counts every message on its Redis


@pytest.fixture(scope="module")
def stack_overrides() -> dict[str, str]:
    return {"RATE_LIMIT_GLOBAL": str(LIMIT), "RATE_LIMIT_PER_PHONE": "1000"}


@pytest.fixture
def r(env: dict[str, str]) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(env["REDIS_URL"], decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def new_window(stack: Stack, r: redis.Redis) -> None:
    """Each test starts a rate window of its own: as if the last one (60 s) had just ended."""
    r.delete(keys.RATE_LIMIT_GLOBAL)


def burst(env: dict[str, str], forms: list[dict[str, str]]) -> list[httpx.Response]:
    """Posts every form at the same moment, each from a thread of its own."""
    start = threading.Barrier(len(forms))
    answers: list[httpx.Response | None] = [None] * len(forms)

    def post(i: int) -> None:
        start.wait()
        answers[i] = post_signed(env, "/webhook/whatsapp", forms[i])

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(forms))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(answer is not None for answer in answers)
    return [answer for answer in answers if answer is not None]


def told_once_each_refused_user(
    sent: list[tuple[str, str]], answers: list[httpx.Response], stored: list[tuple[str, str]]
) -> None:
    """A user some of whose messages were refused hears the rate-limit notice (TwiML in the
    webhook's answer) once, not once per refused message; a user with none refused never."""
    for phone in {phone for phone, _ in sent}:
        told = sum(
            NOTICE in answer.text for (to, _), answer in zip(sent, answers, strict=True) if to == phone
        )
        refused = sum(1 for to, sid in sent if to == phone and (to, sid) not in stored)
        assert told == (1 if refused else 0), f"{phone}: {refused} refused, told {told} times"


def replies_to(twilio_sim: TwilioSim, phones: list[str], total: int) -> dict[str, list[str]]:
    """Each phone's messages at the Twilio stand-in, once `total` arrived and a duplicate had time
    to show up."""
    deadline = time.monotonic() + 60
    while sum(len(twilio_sim.messages(f"whatsapp:{phone}")) for phone in phones) < total:
        assert time.monotonic() < deadline, f"fewer than {total} replies"
        time.sleep(0.1)
    time.sleep(2)
    return {phone: [m["body"] for m in twilio_sim.messages(f"whatsapp:{phone}")] for phone in phones}


def test_a_burst_from_many_users_admits_exactly_the_global_limit(
    new_window: None, env: dict[str, str], twilio_sim: TwilioSim, r: redis.Redis
) -> None:
    phones = [f"+1555885{u:04d}" for u in range(10)]
    assert len({keys.shard_of(user_of(env, phone)) for phone in phones}) > 3, "users of several shards"
    sent = [(phone, f"SMglobal{u:02d}{m:02d}" + "0" * 22) for u, phone in enumerate(phones) for m in range(6)]

    answers = burst(env, [inbound(phone, "/help", sid) for phone, sid in sent])

    assert [answer.status_code for answer in answers] == [200] * len(sent)
    stored = [(phone, sid) for phone, sid in sent if accepted(r, env, phone, sid)]
    assert len(stored) == LIMIT, f"{len(stored)} of {len(sent)} stored for the agent"
    for (phone, sid), answer in zip(sent, answers, strict=True):
        if (phone, sid) in stored:
            assert answer.text.endswith("<Response/>"), answer.text  # accepted: answered later
    told_once_each_refused_user(sent, answers, stored)

    replies = replies_to(twilio_sim, phones, LIMIT)
    for phone in phones:
        assert len(replies[phone]) == sum(1 for to, _ in stored if to == phone), (phone, replies[phone])
        assert all("Commands" in body for body in replies[phone]), replies[phone]


def test_twilio_replays_of_an_accepted_message_do_not_use_up_the_global_limit(
    new_window: None, env: dict[str, str], twilio_sim: TwilioSim, r: redis.Redis
) -> None:
    first = "+15558860000"
    replayed = inbound(first, "/help", "SMreplayed" + "0" * 24)
    assert post_signed(env, "/webhook/whatsapp", replayed).text.endswith("<Response/>")
    assert accepted(r, env, first, replayed["MessageSid"])

    replays = burst(env, [replayed] * 5)  # Twilio retrying it (a timeout at its end, say)

    assert [(a.status_code, a.text.endswith("<Response/>")) for a in replays] == [(200, True)] * 5
    # The rest of the budget is all there: 11 of 16 new messages from other users get in.
    phones = [f"+1555886{u:04d}" for u in range(1, 5)]
    sent = [
        (phone, f"SMafterreplay{u:02d}{m:02d}" + "0" * 17) for u, phone in enumerate(phones) for m in range(4)
    ]
    answers = burst(env, [inbound(phone, "/help", sid) for phone, sid in sent])
    assert [answer.status_code for answer in answers] == [200] * len(sent)
    stored = [(phone, sid) for phone, sid in sent if accepted(r, env, phone, sid)]
    assert len(stored) == LIMIT - 1, f"{len(stored)} of {len(sent)} stored after the replays"
    told_once_each_refused_user(sent, answers, stored)

    replies = replies_to(twilio_sim, [first, *phones], LIMIT)
    assert len(replies[first]) == 1, "the replayed message is answered once"
    assert sum(len(replies[phone]) for phone in phones) == LIMIT - 1
