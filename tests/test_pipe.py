"""The whole pipe on real parts: Twilio-signed HTTP into the webhook, gRPC through agent and
notifier, real Redis, and the reply at a local Twilio Messages API."""

from __future__ import annotations

import time

import httpx
import pytest
import redis
from agent.catalog import HELP
from devtools.stack import Stack
from wacoder import templates

from tests import harness
from tests.harness import (
    BOT_NUMBER,
    TwilioSim,
    inbound,
    post_signed,
    sign,
)

ALICE = "+15551230001"
STRANGER = "+15559990000"


@pytest.fixture(scope="module")
def stack_overrides() -> dict[str, str]:
    return {"ALLOWED_PHONE_NUMBERS": f"{ALICE},+15551230002"}


@pytest.fixture
def sim(twilio_sim: TwilioSim) -> TwilioSim:
    twilio_sim.clear()
    return twilio_sim


def inbox_length(env: dict[str, str]) -> int:
    return harness.inbox_length(redis.Redis.from_url(env["REDIS_URL"]))


def test_help_travels_the_whole_way(stack: Stack, env: dict[str, str], sim: TwilioSim) -> None:
    answer = post_signed(env, "/webhook/whatsapp", inbound(ALICE, "/help", "SMhelp0001"))

    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/xml")
    assert answer.text.endswith("<Response/>")
    [reply] = sim.wait_for(f"whatsapp:{ALICE}")
    assert reply["from"] == BOT_NUMBER
    assert reply["body"] == HELP
    assert reply["status_callback"] == f"{env['PUBLIC_BASE_URL']}/webhook/status"
    # Exactly one: nothing else arrives later.
    time.sleep(1.0)
    assert len(sim.messages()) == 1


def test_help_lists_every_command(stack: Stack) -> None:
    for command in ("/help", "/new", "/list", "/use", "/run", "/status", "/files", "/agents", "/clear"):
        assert command in HELP


@pytest.mark.parametrize("how", ["unsigned", "wrong signature", "signed for another URL", "wrong token"])
def test_bad_signatures_are_refused_and_reach_nothing(
    stack: Stack, env: dict[str, str], sim: TwilioSim, how: str
) -> None:
    form = inbound(ALICE, "/help", f"SMbad{how.replace(' ', '')}")
    url = env["PUBLIC_BASE_URL"] + "/webhook/whatsapp"
    before = inbox_length(env)
    if how == "unsigned":
        answer = httpx.post(url, data=form)
    elif how == "wrong signature":
        answer = httpx.post(url, data=form, headers={"X-Twilio-Signature": "bm90IGEgc2lnbmF0dXJl"})
    elif how == "signed for another URL":
        answer = post_signed(
            env, "/webhook/whatsapp", form, sign_url="https://evil.example.com/webhook/whatsapp"
        )
    else:
        answer = post_signed(env | {"TWILIO_AUTH_TOKEN": "another-token"}, "/webhook/whatsapp", form)

    assert answer.status_code == 403
    assert inbox_length(env) == before
    time.sleep(0.5)
    assert sim.messages() == []


def test_tampered_body_is_refused(stack: Stack, env: dict[str, str], sim: TwilioSim) -> None:
    form = inbound(ALICE, "/help", "SMtamper01")

    signature = sign(env["PUBLIC_BASE_URL"] + "/webhook/whatsapp", form)
    answer = httpx.post(
        env["PUBLIC_BASE_URL"] + "/webhook/whatsapp",
        data=form | {"Body": "/list"},
        headers={"X-Twilio-Signature": signature},
    )
    assert answer.status_code == 403


def test_not_whitelisted_gets_the_template_and_reaches_nothing(
    stack: Stack, env: dict[str, str], sim: TwilioSim
) -> None:
    before = inbox_length(env)
    answer = post_signed(env, "/webhook/whatsapp", inbound(STRANGER, "/help <&> \"'", "SMstranger1"))

    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/xml")
    assert f"<Message>{templates.UNAUTHORIZED}</Message>" in answer.text
    assert inbox_length(env) == before
    time.sleep(0.5)
    assert sim.messages() == []


@pytest.mark.parametrize("missing", ["From", "MessageSid"])
def test_missing_fields_are_a_400(stack: Stack, env: dict[str, str], missing: str) -> None:
    form = inbound(ALICE, "/help", "SMmissing01")
    del form[missing]
    assert post_signed(env, "/webhook/whatsapp", form).status_code == 400


def test_docs_are_served(stack: Stack, env: dict[str, str]) -> None:
    assert httpx.get(env["PUBLIC_BASE_URL"] + "/docs").status_code == 200
    paths = httpx.get(env["PUBLIC_BASE_URL"] + "/openapi.json").json()["paths"]
    assert {"/webhook/whatsapp", "/webhook/status", "/health", "/metrics"} <= set(paths)


def wait_health(env: dict[str, str], status: int, timeout_s: float = 15.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while True:
        answer = httpx.get(env["PUBLIC_BASE_URL"] + "/health", timeout=5)
        if answer.status_code == status or time.monotonic() > deadline:
            assert answer.status_code == status, answer.text
            return answer.json()
        time.sleep(0.2)


@pytest.mark.parametrize("service", ["notifier", "agent", "mcp-bridge"])
def test_health_follows_each_downstream_service(stack: Stack, env: dict[str, str], service: str) -> None:
    body = wait_health(env, 200)
    assert body["checks"] == {"redis": "ok", "agent": "ok", "mcp-bridge": "ok", "notifier": "ok"}

    stack[service].stop()
    body = wait_health(env, 503)
    assert body["checks"][service] == "unavailable"
    assert [name for name, state in body["checks"].items() if state != "ok"] == [service]

    stack[service].start()
    stack[service].wait_ready()
    wait_health(env, 200)
