"""Blue/green: two releases of different colours (QUEUE_NAMESPACE) run side by side on one Redis.
A message accepted by one colour's webhook is worked by that colour's agent and answered by
that colour's notifier only; the conversation itself (state, de-duplication) is shared."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from devtools.stack import Stack
from wacoder import keys

from tests.harness import RedisServer, TwilioSim, inbound, post_signed, stack_env, start_stack

COLOURS = {"blue": "whatsapp:+14155230001", "green": "whatsapp:+14155230002"}


@pytest.fixture(scope="module")
def stacks(
    own_redis: RedisServer, twilio_sim: TwilioSim, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, tuple[dict[str, str], Stack]]]:
    started: dict[str, tuple[dict[str, str], Stack]] = {}
    try:
        for colour, number in COLOURS.items():
            env = stack_env(
                own_redis.url,
                twilio_sim.url,
                QUEUE_NAMESPACE=colour,
                # The colour's own sender number shows at the Twilio stand-in who answered.
                TWILIO_WHATSAPP_NUMBER=number,
                AUTOCODER_DATA_DIR=str(tmp_path_factory.mktemp(f"autocoder-{colour}")),
            )
            started[colour] = (env, start_stack(env))
        yield started
    finally:
        for _env, stack in started.values():
            stack.stop()


def queue_lengths(r: redis.Redis, colour: str) -> tuple[int, int]:
    """(inbox entries, outbox entries ever seen) of one colour, over all shards."""
    keys.configure(keys.SHARDS, colour)
    try:
        inbox = sum(r.xlen(keys.inbox_stream(s)) for s in range(keys.SHARDS))
        sent = sum(
            int(group["entries-read"] or 0)
            for s in range(keys.SHARDS)
            if r.exists(keys.outbox_stream(s))
            for group in r.xinfo_groups(keys.outbox_stream(s))
        )
    finally:
        keys.configure(keys.SHARDS, "")
    return inbox, sent


def test_each_colour_answers_only_what_its_own_webhook_accepted(
    stacks: dict[str, tuple[dict[str, str], Stack]], own_redis: RedisServer, twilio_sim: TwilioSim
) -> None:
    r = redis.Redis.from_url(own_redis.url, decode_responses=True)
    blue_env, _ = stacks["blue"]
    green_env, _ = stacks["green"]
    phone = "+15558870001"  # a number no other module writes to (the Twilio stand-in is shared)

    assert (
        post_signed(
            blue_env, "/webhook/whatsapp", inbound(phone, "/agents", "SMcolour" + "1" * 26)
        ).status_code
        == 200
    )
    [reply] = twilio_sim.wait_for(f"whatsapp:{phone}", count=1, timeout_s=30)
    assert reply["from"] == COLOURS["blue"] and "AutoCoder agents" in reply["body"]
    assert queue_lengths(r, "blue") == (1, 1)
    assert queue_lengths(r, "green") == (0, 0)

    # The same user through the green release: green works it, and the conversation is one.
    assert (
        post_signed(
            green_env, "/webhook/whatsapp", inbound(phone, "/help", "SMcolour" + "2" * 26)
        ).status_code
        == 200
    )
    replies = twilio_sim.wait_for(f"whatsapp:{phone}", count=2, timeout_s=30)
    assert replies[1]["from"] == COLOURS["green"] and "Commands" in replies[1]["body"]
    assert queue_lengths(r, "green") == (1, 1)

    # De-duplication is shared: Twilio replaying blue's message at green is not answered again.
    answer = post_signed(green_env, "/webhook/whatsapp", inbound(phone, "/agents", "SMcolour" + "1" * 26))
    assert answer.status_code == 200
    assert queue_lengths(r, "green") == (1, 1)
