"""Bad input never reaches a 5xx or a stall: malformed Twilio forms (signed, so they get past
the signature check) against a real running webhook, each followed by a normal signed `/help`
that must still be answered at once. And the form parsing on its own."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from agent.catalog import HELP
from devtools.stack import Stack
from webhook.twilio_form import (
    MAX_BODY_CHARS,
    MAX_MEDIA,
    FormRejected,
    clean_text,
    inbound_message,
    media_count,
    parse_form,
)

from tests.harness import TwilioSim, inbound, post_signed, sign

PHONE = "+15557770001"
_sids = itertools.count(1)


def sid() -> str:
    return f"SMmalformed{next(_sids):023d}"


def form(**changes: str | None) -> dict[str, str]:
    """A normal incoming text with `changes` (None removes a field)."""
    fields = inbound(PHONE, "/help", sid())
    for name, value in changes.items():
        if value is None:
            fields.pop(name, None)
        else:
            fields[name] = value
    return fields


Send = Callable[[dict[str, str]], httpx.Response]


def signed(**changes: str | None) -> Send:
    return lambda env: post_signed(env, "/webhook/whatsapp", form(**changes))


def unsigned_huge(env: dict[str, str]) -> httpx.Response:
    return httpx.post(
        env["PUBLIC_BASE_URL"] + "/webhook/whatsapp", data=form(Body="x" * 1_000_000), timeout=10
    )


def chunked_huge(env: dict[str, str]) -> httpx.Response:
    # No Content-Length: the cap has to count the bytes as they arrive.
    def chunks() -> Iterator[bytes]:
        for _ in range(64):
            yield b"Body=" + b"x" * 16_384 + b"&"

    return httpx.post(
        env["PUBLIC_BASE_URL"] + "/webhook/whatsapp",
        content=chunks(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=10,
    )


def too_many_fields(env: dict[str, str]) -> httpx.Response:
    return post_signed(env, "/webhook/whatsapp", form() | {f"Extra{i}": "x" for i in range(500)})


def json_body(env: dict[str, str]) -> httpx.Response:
    url = env["PUBLIC_BASE_URL"] + "/webhook/whatsapp"
    return httpx.post(url, json=form(), headers={"X-Twilio-Signature": sign(url, {})}, timeout=10)


def bad_utf8(env: dict[str, str]) -> httpx.Response:
    url = env["PUBLIC_BASE_URL"] + "/webhook/whatsapp"
    body = "&".join(f"{k}={v}" for k, v in form().items() if k != "Body") + "&Body=%FF%FE%00"
    return httpx.post(
        url,
        content=body.encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": "x"},
        timeout=10,
    )


def status_callback(**changes: str | None) -> Send:
    fields = {
        "MessageSid": sid(),
        "MessageStatus": "delivered",
        "AccountSid": "AC1",
        "To": "whatsapp:+15550001",
    }
    for name, value in changes.items():
        if value is None:
            fields.pop(name, None)
        else:
            fields[name] = value
    return lambda env: post_signed(env, "/webhook/status", fields)


# (what, request, expected status)
CASES: list[tuple[str, Send, int]] = [
    ("NumMedia not a number", signed(NumMedia="abc"), 400),
    ("NumMedia a fraction", signed(NumMedia="1.5"), 400),
    ("NumMedia unicode digits", signed(NumMedia="²"), 400),
    ("NumMedia negative", signed(NumMedia="-1"), 400),
    ("NumMedia a hundred million", signed(NumMedia="100000000"), 200),
    ("NumMedia five thousand digits", signed(NumMedia="9" * 5000), 200),
    (
        "NumMedia 11 with 11 media",
        signed(NumMedia="11", **{f"MediaUrl{i}": f"https://m/{i}" for i in range(11)}),
        200,
    ),
    ("Body of 1 MB", signed(Body="x" * 1_000_000), 413),
    ("Body of 5,000 characters", signed(Body="y" * 5000), 200),
    ("control characters", signed(Body="/he\x00l\x1bp\x7f\r", ProfileName="Bad\x00\x07Name\x9b"), 200),
    ("missing To", signed(To=None), 200),
    ("missing Body", signed(Body=None), 200),
    ("missing NumMedia", signed(NumMedia=None), 200),
    ("unicode", signed(Body="héllo 👩‍💻 مرحبا 你好 \u202e", ProfileName="Zoë 🚀"), 200),
    ("huge MessageSid", signed(MessageSid="SM" + "1" * 10_000), 400),
    ("too many fields", too_many_fields, 400),
    ("unsigned 1 MB", unsigned_huge, 413),
    ("chunked 1 MB", chunked_huge, 413),
    ("JSON instead of a form", json_body, 415),
    ("invalid UTF-8", bad_utf8, 403),
    ("status: 1 MB", status_callback(ErrorMessage="z" * 1_000_000), 413),
    ("status: made-up status", status_callback(MessageStatus="made\x00up"), 204),
    ("status: huge status", status_callback(MessageStatus="x" * 10_000), 400),
    ("status: missing MessageStatus", status_callback(MessageStatus=None), 400),
]


@pytest.fixture
def sim(twilio_sim: TwilioSim) -> TwilioSim:
    twilio_sim.clear()
    return twilio_sim


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    # One kept-alive client: making an httpx client costs tens of milliseconds by itself.
    with httpx.Client(trust_env=False, timeout=10) as made:
        yield made


def help_latency_s(client: httpx.Client, env: dict[str, str]) -> float:
    """The best of three normal signed /help requests: each one answered 200."""
    url = env["PUBLIC_BASE_URL"] + "/webhook/whatsapp"
    best = float("inf")
    for _ in range(3):
        fields = form()
        signature = sign(url, fields, env["TWILIO_AUTH_TOKEN"])
        began = time.perf_counter()
        answer = client.post(url, data=fields, headers={"X-Twilio-Signature": signature})
        best = min(best, time.perf_counter() - began)
        assert answer.status_code == 200, answer.text
    return best


@pytest.mark.parametrize(("what", "send", "expected"), CASES, ids=[c[0] for c in CASES])
def test_malformed_input_is_refused_or_tamed_and_the_webhook_goes_on(
    stack: Stack,
    env: dict[str, str],
    client: httpx.Client,
    what: str,
    send: Send,
    expected: int,
) -> None:
    answer = send(env)

    assert answer.status_code < 500, answer.text
    assert answer.status_code == expected, answer.text
    assert "Traceback" not in answer.text
    if answer.status_code >= 400:
        assert answer.headers["content-type"].startswith("text/plain")
        assert 0 < len(answer.text) < 100
    assert help_latency_s(client, env) < 0.050


def test_control_characters_are_dropped_before_the_agent_sees_them(
    stack: Stack, env: dict[str, str], sim: TwilioSim
) -> None:
    answer = post_signed(env, "/webhook/whatsapp", form(Body="/he\x00l\x1bp\x7f"))
    assert answer.status_code == 200
    [reply] = sim.wait_for(f"whatsapp:{PHONE}")
    assert reply["body"] == HELP


def test_a_long_body_is_truncated_not_refused(stack: Stack, env: dict[str, str], sim: TwilioSim) -> None:
    answer = post_signed(env, "/webhook/whatsapp", form(Body="/help" + " " * 3000 + "tail"))
    assert answer.status_code == 200
    [reply] = sim.wait_for(f"whatsapp:{PHONE}")
    assert reply["body"] == HELP  # "tail" was cut off with the rest past 1,600 characters


# ---- the parsing on its own --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "count"),
    [
        ("", 0),
        ("0", 0),
        (" 3 ", 3),
        ("10", 10),
        ("11", MAX_MEDIA),
        ("100000000", MAX_MEDIA),
        ("9" * 5000, MAX_MEDIA),
    ],
)
def test_media_count(value: str, count: int) -> None:
    assert media_count(value) == count


@pytest.mark.parametrize("value", ["abc", "-1", "-0", "1.5", "1e3", "1_0", "٣", "²", "0x10", "+-1"])
def test_media_count_refuses_what_is_not_a_count(value: str) -> None:
    with pytest.raises(FormRejected) as refused:
        media_count(value)
    assert refused.value.status == 400


def test_clean_text_keeps_newlines_tabs_and_emoji() -> None:
    assert clean_text("a\nb\tc\x00d\re\x1bf\x7fg\x85h", 100) == "a\nb\tcdefgh"
    assert clean_text("👩‍💻", 100) == "👩‍💻"  # the ZWJ (a format character, not a control) stays
    assert clean_text("x" * 2000, MAX_BODY_CHARS) == "x" * MAX_BODY_CHARS


def test_inbound_message_considers_at_most_ten_media() -> None:
    fields = form(NumMedia="100000000") | {f"MediaUrl{i}": f"https://m/{i}" for i in range(12)}
    message = inbound_message(fields, received_at_ms=1)
    assert [m.url for m in message.media] == [f"https://m/{i}" for i in range(MAX_MEDIA)]
    assert message.recipient == form()["To"]
    assert inbound_message(form(To=None, Body=None), received_at_ms=1).recipient == ""


def test_parse_form_keeps_the_last_of_a_repeated_field_and_blank_values() -> None:
    assert parse_form(b"A=1&A=2&B=&C=%F0%9F%9A%80+x") == {"A": "2", "B": "", "C": "🚀 x"}
    with pytest.raises(FormRejected):
        parse_form(b"&".join(b"F%d=1" % i for i in range(1000)))
