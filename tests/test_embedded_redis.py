"""`make run`'s embedded Redis (devtools.embedded_redis) survives a kill -9 during traffic: it
writes its append-only file before it answers, so every message that got a 200 is still there
when it comes back (same port, same directory), and is answered exactly once."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
import redis
from devtools.embedded_redis import EmbeddedRedis
from devtools.stack import Stack

from tests.harness import TwilioSim, accepted, inbound, post_signed

USERS = 6
MESSAGES = 10


@pytest.fixture(scope="module")
def module_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    embedded = EmbeddedRedis(tmp_path_factory.mktemp("embedded-redis"))
    embedded.start()
    yield embedded
    embedded.stop()


@pytest.fixture(scope="module")
def stack_overrides() -> dict[str, str]:
    return {"NOTIFIER_BACKOFF_BASE_S": "0.05"}


def send_until_accepted(
    env: dict[str, str], form: dict[str, str], refused: list[str], tries: int = 200
) -> bool:
    """Posts as Twilio does: again after anything but a 200 (a 503, no answer at all), each
    refusal noted in `refused`."""
    for _ in range(tries):
        try:
            answer = post_signed(env, "/webhook/whatsapp", form)
            if answer.status_code == 200:
                return True
            refused.append(str(answer.status_code))
        except httpx.HTTPError as error:
            refused.append(type(error).__name__)
        time.sleep(0.2)
    return False


def test_a_kill_9_of_the_embedded_redis_loses_nothing_that_got_a_200(
    stack: Stack, env: dict[str, str], twilio_sim: TwilioSim, module_redis: EmbeddedRedis
) -> None:
    twilio_sim.clear()  # the stand-in is shared by the session's modules
    phones = [f"+1555884{u:04d}" for u in range(USERS)]
    sids = {
        phone: [f"SMembedded{u:02d}{m:03d}" + "0" * 19 for m in range(MESSAGES)]
        for u, phone in enumerate(phones)
    }
    got_200: dict[str, list[str]] = {phone: [] for phone in phones}
    before_the_kill: list[tuple[str, str]] = []
    lock = threading.Lock()
    halfway = threading.Event()
    killed = threading.Event()
    refused: list[str] = []

    def write(phone: str) -> None:
        for m, sid in enumerate(sids[phone]):
            if send_until_accepted(env, inbound(phone, f"/agents {m}", sid), refused):
                with lock:
                    got_200[phone].append(sid)
                    if not killed.is_set():
                        before_the_kill.append((phone, sid))
                    if sum(map(len, got_200.values())) >= USERS * MESSAGES // 2:
                        halfway.set()
            time.sleep(0.2)

    writers = [threading.Thread(target=write, args=(phone,)) for phone in phones]
    for w in writers:
        w.start()
    assert halfway.wait(60), "half the messages accepted before the kill"
    with lock:
        killed.set()
        module_redis.kill()  # SIGKILL: no shutdown, no last flush
    time.sleep(1)
    module_redis.start()  # same port, same directory: it loads its append-only file
    for w in writers:
        w.join()

    assert all(len(got_200[phone]) == MESSAGES for phone in phones), "every writer got through in the end"
    assert refused, "the kill struck during traffic: some posts were refused and sent again"
    # The messages that got their 200 before the kill are still stored after it.
    r = redis.Redis.from_url(module_redis.url, decode_responses=True)
    lost = [(phone, sid) for phone, sid in before_the_kill if not accepted(r, env, phone, sid)]
    assert before_the_kill and not lost, f"{len(lost)} of {len(before_the_kill)} lost by the kill: {lost[:3]}"

    for phone in phones:
        replies = twilio_sim.wait_for(f"whatsapp:{phone}", count=MESSAGES, timeout_s=120)
        assert all("AutoCoder agents" in reply["body"] for reply in replies), replies
    time.sleep(3)  # a duplicate would show up now
    counts = Counter(message["to"] for message in twilio_sim.messages())
    assert {phone: counts[f"whatsapp:{phone}"] for phone in phones} == dict.fromkeys(phones, MESSAGES), (
        "each message answered exactly once"
    )
