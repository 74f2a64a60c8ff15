"""The global rate limit across users, shards and windows (docs/adr/0007, decision 4): one counter
per fixed window of the clock, in a slot of its own beside each user's script; whatever the
user's script refused (a Twilio replay, a message over the per-phone limit) is counted back in
the window it was counted in. So a burst from many users at once admits exactly the limit,
replays of an accepted message do not use it up, and a refusal straddling a window's end never
lends the next window a place. Each test runs on a standalone Redis and on a Redis Cluster."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import redis
from devtools.stack import Stack
from wacoder import keys, templates
from wacoder.botconfig import BotConfigSource
from wacoder.redis import Store, open_redis
from wacoder.settings import Settings
from webhook.admission import RATE_WINDOW_S, Admission, Gate, window_start

from tests import redis_cluster as topologies
from tests.harness import HASH_SALT, RedisServer, TwilioSim, accepted, inbound, post_signed, user_of
from tests.redis_cluster import RedisClusterServer

# The fixture, bound by assignment (imported, every test taking it would redefine the import).
redis_cluster = topologies.redis_cluster

LIMIT = 12
NOTICE = f"<Message>{templates.RATE_LIMIT}</Message>"
# A burst must fall in one window: a test starts only with this much of the window left.
BURST_ROOM_S = 15.0


@pytest.fixture(scope="module", params=["standalone", "cluster"])
def module_redis(request: pytest.FixtureRequest) -> RedisServer | RedisClusterServer:
    """A Redis of the module's own, each topology in turn: the global counter counts every message."""
    if request.param == "cluster":
        cluster: RedisClusterServer = request.getfixturevalue("redis_cluster")
        return cluster
    server: RedisServer = request.getfixturevalue("own_redis")
    return server


@pytest.fixture(scope="module")
def stack_overrides() -> dict[str, str]:
    return {"RATE_LIMIT_GLOBAL": str(LIMIT), "RATE_LIMIT_PER_PHONE": "1000"}


@pytest.fixture
def r(env: dict[str, str]) -> Iterator[redis.Redis | redis.RedisCluster]:
    url = env["REDIS_URL"]
    with redis.Redis.from_url(url, decode_responses=True) as probe:
        clustered = int(probe.info("cluster").get("cluster_enabled", 0)) == 1
    client = (redis.RedisCluster if clustered else redis.Redis).from_url(url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def new_window(stack: Stack, r: redis.Redis, twilio_sim: TwilioSim) -> None:
    """Each test has a rate window of its own: it starts in a window with room left for its burst,
    whose counter it empties (an earlier test may have counted in it); and the Twilio stand-in
    holds only its replies (the same users write on each topology)."""
    twilio_sim.clear()
    left = RATE_WINDOW_S - time.time() % RATE_WINDOW_S
    if left < BURST_ROOM_S:
        time.sleep(left + 0.1)  # waits for the next window; asserts nothing
    r.delete(keys.rate_limit_global(window_start(time.time())))


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


# The Gate itself against the real Redis, with a clock the test sets: a window boundary on demand.


class Clock:
    """Epoch seconds as the test says: `now`, except that readings queued in `first` come before."""

    def __init__(self, now: float) -> None:
        self.now = now
        self.first: list[float] = []

    def __call__(self) -> float:
        return self.first.pop(0) if self.first else self.now


_windows = itertools.count(1)


@pytest.fixture
async def store(module_redis: RedisServer | RedisClusterServer) -> AsyncIterator[Store]:
    client = await open_redis(Settings(_env_file=None, redis_url=module_redis.url))
    yield client
    await client.aclose()


async def test_a_refusal_at_a_window_end_is_counted_back_in_its_own_window_not_the_next(
    store: Store,
) -> None:
    limit = 3
    settings = Settings(
        _env_file=None,
        allowed_phone_numbers="*",
        rate_limit_per_phone=1,
        rate_limit_global=limit,
        bot_config_file=None,
    )
    # A window far from the real clock's, so nothing else counts in it.
    w = (window_start(time.time()) // RATE_WINDOW_S + 1000 * next(_windows)) * RATE_WINDOW_S
    clock = Clock(w + 30.0)
    gate = Gate(store, BotConfigSource(settings), HASH_SALT, clock)
    phones = iter(f"+1555887{u:04d}" for u in itertools.count())
    sids = (f"SMwindow{n:026d}" for n in itertools.count())
    alice = next(phones)

    assert await gate.admit(alice, next(sids)) == Admission.OK
    # The next window has begun at another webhook: someone got in there.
    clock.now = w + RATE_WINDOW_S + 0.2
    assert await gate.admit(next(phones), next(sids)) == Admission.OK
    # Alice's second message arrived just before the boundary (the per-phone limit refuses it);
    # by the time its count-back goes out, the clock is past it.
    clock.first = [w + RATE_WINDOW_S - 0.001]
    clock.now = w + RATE_WINDOW_S + 0.5
    assert await gate.admit(alice, next(sids)) == Admission.RATE_LIMITED
    assert not clock.first, "the gate read the clock"

    # The count-back landed where the count did: the old window holds Alice's one admitted
    # message, and the next window still has exactly limit - 1 places, not one more.
    assert int(await store.get(keys.rate_limit_global(w)) or 0) == 1
    verdicts = [await gate.admit(next(phones), next(sids)) for _ in range(limit)]
    assert verdicts == [Admission.OK] * (limit - 1) + [Admission.RATE_LIMITED]
