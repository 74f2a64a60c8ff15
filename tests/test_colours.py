"""Blue/green: two releases of different colours (QUEUE_NAMESPACE) run side by side on one Redis.

Colours share state, not queues (ADR 0008, decision 3): a message accepted by one colour's
webhook is worked by that colour's agent and answered by that colour's notifier only, once;
the conversation (state, the active project), de-duplication and the per-phone limit are the
user's, whichever colour answers. And "the old colour drains what it accepted before it is
scaled down": the operator keeps it running for the scale-down delay (ADR 0009), and what a
SIGTERM still finds in its queues stays there, pending, to be answered when that colour runs
again (ADR 0007: unfinished entries stay pending for the next owner; a colour's next owner is
its own next pod).

Both colours use one AutoCoder, as the chart lets them (one release runs it, the other names
its `autocoder.mcpUrl`), so a user's projects are the same on either colour.
"""

from __future__ import annotations

import itertools
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
import redis
from devtools.stack import ServiceProcess, Stack
from wacoder import keys, templates

from tests.harness import RedisServer, TwilioSim, inbound, post_signed, stack_env, start_stack

COLOURS = {"blue": "whatsapp:+14155230001", "green": "whatsapp:+14155230002"}
# Low enough to reach in a few messages; a module's users each send fewer than this.
PER_PHONE_LIMIT = 5

Stacks = dict[str, tuple[dict[str, str], Stack]]
T = TypeVar("T")


@pytest.fixture(scope="module")
def stacks(
    own_redis: RedisServer, twilio_sim: TwilioSim, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stacks]:
    started: Stacks = {}
    try:
        shared: dict[str, str] = {}
        for colour, number in COLOURS.items():
            env = stack_env(
                own_redis.url,
                twilio_sim.url,
                QUEUE_NAMESPACE=colour,
                # The colour's own sender number shows at the Twilio stand-in who answered.
                TWILIO_WHATSAPP_NUMBER=number,
                AUTOCODER_DATA_DIR=str(tmp_path_factory.mktemp(f"autocoder-{colour}")),
                RATE_LIMIT_PER_PHONE=str(PER_PHONE_LIMIT),
                # A notifier resuming a send it had begun waits this long for a request of its
                # predecessor to land before asking Twilio (15 s by default).
                NOTIFIER_TWILIO_TIMEOUT_S="3",
                **shared,
            )
            if not shared:  # blue runs the AutoCoder; green uses it
                started[colour] = (env, start_stack(env))
                shared = {k: env[k] for k in ("AUTOCODER_PORT", "AUTOCODER_MCP_URL")}
            else:
                services = ["mcp-bridge", "notifier", "agent", "webhook"]
                started[colour] = (env, start_stack(env, services))
        yield started
    finally:
        for _env, stack in started.values():
            stack.stop()


@pytest.fixture
def r(own_redis: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(own_redis.url, decode_responses=True)


_sids = itertools.count(1)


def post(env: dict[str, str], phone: str, text: str, sid: str | None = None) -> str:
    """What a user types, as Twilio posts it to one colour's webhook; the webhook's answer."""
    sid = sid or f"SMcolours{next(_sids):024d}"
    answer = post_signed(env, "/webhook/whatsapp", inbound(phone, text, sid))
    assert answer.status_code == 200, answer.text
    return answer.text


def say(env: dict[str, str], sim: TwilioSim, phone: str, text: str) -> dict[str, Any]:
    """Posts `text` and returns the reply it gets (the next message to `phone`)."""
    before = len(sim.messages(f"whatsapp:{phone}"))
    assert post(env, phone, text).endswith("<Response/>")
    return sim.wait_for(f"whatsapp:{phone}", count=before + 1, timeout_s=30)[before]


def in_colour(colour: str, read: Callable[[], T]) -> T:
    """`read` with the key names of one colour's queues (keys.configure is per process)."""
    keys.configure(keys.SHARDS, colour)
    try:
        return read()
    finally:
        keys.configure(keys.SHARDS, "")


def outstanding(r: redis.Redis, colour: str, stream: Callable[[int], str], group: str) -> int:
    """Entries of one colour's streams (inbox or outbox) not yet finished: pending at a consumer,
    or not read yet."""

    def count() -> int:
        total = 0
        for shard in range(keys.SHARDS):
            if r.exists(stream(shard)):
                for info in r.xinfo_groups(stream(shard)):
                    if info["name"] == group:
                        total += int(info["pending"]) + int(info["lag"] or 0)
        return total

    return in_colour(colour, count)


def delivered_to_a_consumer(r: redis.Redis, colour: str) -> int:
    """Inbox entries of one colour read by an agent and not acknowledged (being worked)."""

    def count() -> int:
        return sum(
            int(r.xpending(keys.inbox_stream(s), keys.INBOX_GROUP)["pending"])
            for s in range(keys.SHARDS)
            if r.exists(keys.inbox_stream(s))
        )

    return in_colour(colour, count)


def queue_lengths(r: redis.Redis, colour: str) -> tuple[int, int]:
    """(inbox entries, outbox entries ever seen) of one colour, over all shards."""

    def count() -> tuple[int, int]:
        inbox = sum(r.xlen(keys.inbox_stream(s)) for s in range(keys.SHARDS))
        sent = sum(
            int(group["entries-read"] or 0)
            for s in range(keys.SHARDS)
            if r.exists(keys.outbox_stream(s))
            for group in r.xinfo_groups(keys.outbox_stream(s))
        )
        return inbox, sent

    return in_colour(colour, count)


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.05)


def settled(r: redis.Redis) -> bool:
    """Every colour's inbox and outbox finished: nothing more will be sent."""
    return all(
        outstanding(r, c, keys.inbox_stream, keys.INBOX_GROUP) == 0
        and outstanding(r, c, keys.outbox_stream, keys.OUTBOX_GROUP) == 0
        for c in COLOURS
    )


def replies_by_colour(sim: TwilioSim, phone: str) -> list[tuple[str, str]]:
    """(colour, body) of every message the stand-in got for `phone`, in order."""
    colour_of = {number: colour for colour, number in COLOURS.items()}
    return [(colour_of[m["from"]], m["body"]) for m in sim.messages(f"whatsapp:{phone}")]


def terminate(process: ServiceProcess, grace_s: float = 20.0) -> int:
    """SIGTERM, as Kubernetes scales a Deployment down; the exit status, once it exited by itself."""
    assert process.proc is not None and process.alive
    process.proc.send_signal(signal.SIGTERM)
    try:
        status = process.proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(f"{process.name} did not stop within {grace_s}s of SIGTERM") from None
    process.stop()  # closes its log; the process is gone
    return status


def test_each_colour_answers_only_what_its_own_webhook_accepted(
    stacks: Stacks, r: redis.Redis, twilio_sim: TwilioSim
) -> None:
    blue_env, _ = stacks["blue"]
    green_env, _ = stacks["green"]
    phone = "+15558870001"  # a number no other module writes to (the Twilio stand-in is shared)

    post(blue_env, phone, "/agents", "SMcolour" + "1" * 26)
    [reply] = twilio_sim.wait_for(f"whatsapp:{phone}", count=1, timeout_s=30)
    assert reply["from"] == COLOURS["blue"] and "AutoCoder agents" in reply["body"]
    assert queue_lengths(r, "blue") == (1, 1)
    assert queue_lengths(r, "green") == (0, 0)

    # The same user through the green release: green works it, and the conversation is one.
    post(green_env, phone, "/help", "SMcolour" + "2" * 26)
    replies = twilio_sim.wait_for(f"whatsapp:{phone}", count=2, timeout_s=30)
    assert replies[1]["from"] == COLOURS["green"] and "Commands" in replies[1]["body"]
    assert queue_lengths(r, "green") == (1, 1)

    # De-duplication is shared: Twilio replaying blue's message at green is not answered again.
    assert post(green_env, phone, "/agents", "SMcolour" + "1" * 26).endswith("<Response/>")
    assert queue_lengths(r, "green") == (1, 1)
    wait_until(lambda: settled(r), "both colours finished")
    assert len(twilio_sim.messages(f"whatsapp:{phone}")) == 2


def test_a_conversation_started_on_blue_continues_on_green(stacks: Stacks, twilio_sim: TwilioSim) -> None:
    blue_env, _ = stacks["blue"]
    green_env, _ = stacks["green"]
    phone = "+15558870002"

    created = say(blue_env, twilio_sim, phone, "/new colour-switch")
    assert created["from"] == COLOURS["blue"] and "Created project *colour-switch*" in created["body"]
    # After the switch green answers: the project is there, and it is still the active one
    # (the conversation state blue wrote).
    listed = say(green_env, twilio_sim, phone, "/list")
    assert listed["from"] == COLOURS["green"]
    [project_line] = [line for line in listed["body"].splitlines() if "*colour-switch*" in line]
    assert project_line.endswith("← active"), listed["body"]


def test_the_per_phone_limit_counts_messages_through_both_colours(
    stacks: Stacks, r: redis.Redis, twilio_sim: TwilioSim
) -> None:
    envs = {colour: env for colour, (env, _stack) in stacks.items()}
    phone = "+15558870003"
    # Alternating colours, as a switch mid-conversation does: one limit for the user, not one
    # per colour (either colour alone stays under it).
    route = ["blue", "green", "blue", "green", "blue"]
    assert len(route) == PER_PHONE_LIMIT
    texts = {"blue": "/help", "green": "/agents"}
    for colour in route:
        assert post(envs[colour], phone, texts[colour]).endswith("<Response/>")
    # Over the limit on green, then on blue: refused by both; the notice is said once.
    assert f"<Message>{templates.RATE_LIMIT}</Message>" in post(envs["green"], phone, "/help")
    assert post(envs["blue"], phone, "/help").endswith("<Response/>")

    # Each accepted message answered once, by the colour that accepted it.
    twilio_sim.wait_for(f"whatsapp:{phone}", count=len(route), timeout_s=30)
    wait_until(lambda: settled(r), "both colours finished")
    replies = replies_by_colour(twilio_sim, phone)
    assert sorted(c for c, _ in replies) == sorted(route)
    for colour, body in replies:
        assert ("Commands" in body) if colour == "blue" else ("AutoCoder agents" in body), (colour, body)


def test_the_old_colour_answers_what_it_accepted_once_it_runs_again(
    stacks: Stacks, r: redis.Redis, twilio_sim: TwilioSim
) -> None:
    """Blue scaled down (SIGTERM) with accepted, unanswered messages in both its queues: they
    stay in blue's queues (green, live meanwhile, never takes them) and blue answers each of
    them once, in order, when it runs again."""
    blue_env, blue = stacks["blue"]
    green_env, _ = stacks["green"]
    phone, bystander = "+15558870004", "+15558870005"
    to = f"whatsapp:{phone}"

    def outbox() -> int:
        return outstanding(r, "blue", keys.outbox_stream, keys.OUTBOX_GROUP)

    def inbox() -> int:
        return outstanding(r, "blue", keys.inbox_stream, keys.INBOX_GROUP)

    try:
        # Twilio holds blue's first send back for a minute (429, Retry-After): blue's notifier
        # waits it out, and the user's next reply queues behind it in the user's lane.
        twilio_sim.script([{"status": 429, "code": 20429, "headers": {"Retry-After": "60"}}])
        try:
            post(blue_env, phone, "/agents")
            post(blue_env, phone, "/help")
            wait_until(
                lambda: outbox() == 2 and any(a["to"] == to for a in twilio_sim.attempts()),
                "both replies are in blue's outbox and the first was tried",
            )
            # Blue's notifier is told to stop with both replies unsent.
            assert terminate(blue["notifier"]) == 0
        finally:
            twilio_sim.script([])
        assert outbox() == 2  # kept, pending, in blue's own outbox

        # Blue's agent is told to stop while it works on the user's next messages (their
        # replies cannot be handed to the stopped notifier, so it retries them).
        post(blue_env, phone, "/list")
        post(blue_env, phone, "/help")
        wait_until(lambda: delivered_to_a_consumer(r, "blue") == 2, "blue's agent holds both messages")
        assert terminate(blue["agent"]) == 0
        assert inbox() == 2 and outbox() == 2

        # Green is live meanwhile, and works its own queues only.
        answer = say(green_env, twilio_sim, bystander, "/help")
        assert answer["from"] == COLOURS["green"] and "Commands" in answer["body"]
        assert twilio_sim.messages(to) == [] and inbox() == 2 and outbox() == 2
    finally:
        # Blue runs again (the next rollout scales it up), whatever happened above.
        for name in ("notifier", "agent"):
            if not blue[name].alive:
                blue[name].start()
                blue[name].wait_ready()

    twilio_sim.wait_for(to, count=4, timeout_s=60)
    wait_until(lambda: settled(r), "both colours finished", timeout_s=60)
    replies = replies_by_colour(twilio_sim, phone)
    assert [colour for colour, _ in replies] == ["blue"] * 4, replies
    bodies = [body for _, body in replies]
    assert "AutoCoder agents" in bodies[0] and "Commands" in bodies[1], bodies
    assert "no projects yet" in bodies[2] and "Commands" in bodies[3], bodies
