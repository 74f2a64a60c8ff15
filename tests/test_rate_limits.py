"""Rate limits per phone and globally, per minute: the user hears the seed's template, and a
Twilio replay of an accepted message is not counted against them."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from wacoder import templates
from webhook.admission import RATE_WINDOW_S

from tests.harness import Conversation, RedisServer, inbound, post_signed


@pytest.fixture(scope="module")
def module_redis(own_redis: RedisServer) -> RedisServer:
    return own_redis  # the global limit counts every message on a Redis: start from zero


@pytest.fixture(scope="module")
def stack_overrides() -> dict[str, str]:
    return {"RATE_LIMIT_PER_PHONE": "3", "RATE_LIMIT_GLOBAL": "5"}


def test_per_phone_then_global_limits(new_user: Callable[[], Conversation], env: dict[str, str]) -> None:
    alice, bob = new_user(), new_user()
    # The global counter is the clock minute's (ADR 0007): all of this must count in one.
    left = RATE_WINDOW_S - time.time() % RATE_WINDOW_S
    if left < 15:
        time.sleep(left + 0.1)  # waits for the next window; asserts nothing

    def post(user: Conversation, n: int) -> str:
        form = inbound(user.phone, "/agents", f"SMrate{user.phone}{n}")
        answer = post_signed(env, "/webhook/whatsapp", form)
        assert answer.status_code == 200
        return answer.text

    assert [post(alice, n).endswith("<Response/>") for n in range(3)] == [True] * 3
    assert post(alice, 1).endswith("<Response/>")  # a replay: not counted, not refused
    assert f"<Message>{templates.RATE_LIMIT}</Message>" in post(alice, 3)
    assert len(alice.next(3)) == 3  # the accepted ones are answered

    # Alice's refusal did not use up the global budget: 3 of 5 are spent.
    assert post(bob, 0).endswith("<Response/>")
    assert post(bob, 1).endswith("<Response/>")
    assert f"<Message>{templates.RATE_LIMIT}</Message>" in post(bob, 2)
