"""What the operator reads from a bot's colour, against a real stack.

- The promotion probe: one signed `/help` from the probe number goes through webhook, agent and
  notifier, its reply is read back from the webhook, and nobody is texted. The operator's own
  checker (wacoder_operator.checks.HttpChecker) passes on a healthy stack and fails, saying why,
  when the agent is down or the token is wrong.
- The backlog before a scale-down (wacoder_operator.backlog.HttpBacklogReader): the depth gauges
  of the real agent and notifier count what their queues hold, and a queue whose gauge cannot be
  read is not taken for empty.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import httpx
import pytest
import redis.asyncio as aioredis
from agent.catalog import HELP
from devtools.stack import Stack
from wacoder import probe
from wacoder.crypto import StateCipher
from wacoder.whatsapp_text import split_message
from wacoder_operator import checks
from wacoder_operator.backlog import HttpBacklogReader
from wacoder_operator.checks import ALL_CHECKS, HttpChecker
from wacoder_operator.rollout import Backlog, CheckResult, Colour

from tests.harness import BOT_NUMBER, Conversation, TwilioSim, inbound, post_signed, sign

pytestmark = pytest.mark.e2e


def run_checks(env: dict[str, str], *, token: str | None = None, reply_timeout_s: float = 20) -> CheckResult:
    checker = HttpChecker(url_template=env["PUBLIC_BASE_URL"], reply_timeout_s=reply_timeout_s)
    return asyncio.run(
        checker.run(
            bot="bot",
            namespace="default",
            checks=ALL_CHECKS,
            public_base_url=env["PUBLIC_BASE_URL"],
            auth_token=token or env["TWILIO_AUTH_TOKEN"],
            recipient=BOT_NUMBER,
        )
    )


def texts_to_the_probe(sim: TwilioSim) -> list[object]:
    """Every request to Twilio's Messages API (accepted or not) that named the probe number."""
    sent = [*sim.attempts(), *sim.messages()]
    return [m for m in sent if probe.PROBE_SENDER in json.dumps(m)]


def test_the_operator_and_the_services_name_the_same_probe_number() -> None:
    assert checks.PROBE_SENDER == probe.PROBE_SENDER


def test_the_probe_goes_through_the_pipe_and_texts_nobody(
    stack: Stack, env: dict[str, str], twilio_sim: TwilioSim
) -> None:
    # The probe number is on nobody's whitelist, and still answered.
    assert probe.PROBE_SENDER not in env.get("ALLOWED_PHONE_NUMBERS", "")
    result = run_checks(env)
    assert result.ok, result.message
    assert "readyz 200" in result.message and "synthetic message answered" in result.message
    time.sleep(0.5)  # a send to Twilio would have been made by now
    assert texts_to_the_probe(twilio_sim) == []


def test_the_probe_reply_is_read_with_a_signature_only(stack: Stack, env: dict[str, str]) -> None:
    path = "/webhook/probe/SMnotaprobe"
    url = env["PUBLIC_BASE_URL"] + path
    assert httpx.get(url, timeout=5).status_code == 403
    wrong = sign(url, {}, "not-the-token")
    assert httpx.get(url, headers={"X-Twilio-Signature": wrong}, timeout=5).status_code == 403
    # Signed, for a message that was never a probe: nothing to read.
    right = sign(url, {}, env["TWILIO_AUTH_TOKEN"])
    answer = httpx.get(url, headers={"X-Twilio-Signature": right}, timeout=5)
    assert answer.status_code == 404


def test_the_reply_read_back_is_the_agents_answer(stack: Stack, env: dict[str, str]) -> None:
    sid = "SMprobe" + str(time.time_ns())
    form = inbound(probe.PROBE_SENDER, "/help", sid)
    assert post_signed(env, "/webhook/whatsapp", form).text.endswith("<Response/>")
    path = f"/webhook/probe/{sid}"
    url = env["PUBLIC_BASE_URL"] + path
    headers = {"X-Twilio-Signature": sign(url, {}, env["TWILIO_AUTH_TOKEN"])}
    deadline = time.monotonic() + 20
    while (answer := httpx.get(url, headers=headers, timeout=5)).status_code == 404:
        assert time.monotonic() < deadline, "no reply to the probe"
        time.sleep(0.1)
    assert answer.status_code == 200
    assert answer.text == HELP


async def test_a_reply_in_parts_reads_back_whole(env: dict[str, str]) -> None:
    """A reply the notifier split (numbered parts, a code fence across them) is read back as it
    was written, and not before its last part is kept."""
    redis = aioredis.from_url(env["REDIS_URL"], decode_responses=True)
    cipher, salt = StateCipher(env["STATE_ENCRYPTION_KEY"]), env["PHONE_HASH_SALT"]
    text = "```\n" + "x = 1\n" * 500 + "```\n" + "done " * 300
    parts = split_message(text)
    assert len(parts) >= 3
    sid = "SMparts" + str(time.time_ns())
    try:
        for n, part in enumerate(parts, 1):
            assert await probe.read_reply(redis, cipher, salt, sid) is None
            async with redis.pipeline(transaction=True) as pipe:
                probe.hold(pipe, cipher, salt, f"reply:{sid}", f"{n}/{len(parts)}", part)
                await pipe.execute()
        assert await probe.read_reply(redis, cipher, salt, sid) == text
    finally:
        await redis.aclose()


def test_a_wrong_token_fails_the_check(stack: Stack, env: dict[str, str]) -> None:
    result = run_checks(env, token="not-the-bots-token")
    assert not result.ok
    assert "refused the signature" in result.message


def test_the_check_fails_while_the_agent_is_down_and_nobody_is_texted(
    stack: Stack, env: dict[str, str], twilio_sim: TwilioSim
) -> None:
    stack["agent"].stop()
    try:
        result = run_checks(env, reply_timeout_s=3)
        # /readyz alone would pass (the webhook stores the message itself): the probe does not.
        assert not result.ok
        assert "no reply to the probe" in result.message, result.message
    finally:
        stack["agent"].start()
        stack["agent"].wait_ready()
    # Back, the agent answers what it was sent, still into the probe's record only.
    assert run_checks(env).ok
    time.sleep(0.5)
    assert texts_to_the_probe(twilio_sim) == []


class StackBacklogReader(HttpBacklogReader):
    """The operator's reader with the stack's metrics ports where a cluster has its Services."""

    def __init__(self, env: dict[str, str]) -> None:
        super().__init__()
        self.ports = {"agent": env["AGENT_METRICS_PORT"], "notifier": env["NOTIFIER_METRICS_PORT"]}

    def url(self, bot: str, namespace: str, colour: Colour, component: str) -> str:
        return f"http://127.0.0.1:{self.ports[component]}/metrics"


def read_backlog(env: dict[str, str]) -> Backlog:
    return asyncio.run(StackBacklogReader(env).read("bot", "default", Colour("blue")))


def test_the_backlog_is_what_the_queues_hold(
    stack: Stack, env: dict[str, str], twilio_sim: TwilioSim, new_user: Callable[[], Conversation]
) -> None:
    assert read_backlog(env) == Backlog(0, 0, None)
    user = new_user()
    stack["notifier"].stop()
    try:
        for text in ("/help", "/agents", "/list"):
            user.send(text)
        # The agent holds the first message (its hand-off fails, retried in place) and the rest
        # wait behind it: all three are in its inbox. The notifier's gauge cannot be read.
        deadline = time.monotonic() + 20
        while (backlog := read_backlog(env)).inbox < 3:
            assert time.monotonic() < deadline, backlog
            time.sleep(0.2)
        assert backlog.inbox == 3 and backlog.error is not None
        assert f":{env['NOTIFIER_METRICS_PORT']}/metrics" in backlog.error  # the notifier's gauge
        assert "could not be read" in backlog.describe()
    finally:
        stack["notifier"].start()
        stack["notifier"].wait_ready()
    assert len(user.next(3)) == 3
    deadline = time.monotonic() + 20
    while (backlog := read_backlog(env)) != Backlog(0, 0, None):
        assert time.monotonic() < deadline, backlog
        time.sleep(0.2)
