"""A property-based corpus of hostile requests against a real webhook: random forms, header
tricks (forwarded host and scheme, a spoofed Host), and signatures that are valid for some other
URL or some other form. None may yield a 5xx, and nothing that is not signed for exactly this
URL and form may reach the agent's inbox."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import httpx
import pytest
import redis
from devtools.stack import Stack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.harness import accepted, inbound, sign

PHONE = "+15557770001"
_sids = itertools.count(1)

# Field names Twilio sends, and others; values from anywhere in Unicode (no surrogates: a form
# cannot carry them).
field_names = st.sampled_from(
    ["From", "To", "Body", "MessageSid", "NumMedia", "MediaUrl0", "ProfileName", "WaId", "X", "Body[]"]
)
field_values = st.text(st.characters(exclude_categories=["Cs"]), max_size=300)
extra_fields = st.dictionaries(field_names, field_values, max_size=6)
header_tricks = st.fixed_dictionaries(
    {},
    optional={
        "X-Forwarded-Host": st.sampled_from(["evil.example", "127.0.0.1:1", ""]),
        "X-Forwarded-Proto": st.sampled_from(["https", "gopher", ""]),
        "Host": st.sampled_from(["evil.example", "localhost:1"]),
        "X-Forwarded-For": st.sampled_from(["1.2.3.4", "::1"]),
    },
)
# How the request is signed: not at all, garbage, over another URL, over another form, properly.
signings = st.sampled_from(["none", "garbage", "other_url", "other_form", "valid"])


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as http:
        yield http


@pytest.fixture(scope="module")
def r(env: dict[str, str]) -> redis.Redis:
    return redis.Redis.from_url(env["REDIS_URL"], decode_responses=True)


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(extra=extra_fields, headers=header_tricks, signing=signings)
def test_hostile_requests_never_yield_a_5xx_nor_reach_the_agent_unsigned(
    client: httpx.Client,
    env: dict[str, str],
    r: redis.Redis,
    extra: dict[str, str],
    headers: dict[str, str],
    signing: str,
) -> None:
    sid = f"SMhostile{next(_sids):025d}"
    form = {**inbound(PHONE, "/help", sid), **extra, "MessageSid": sid}
    url = env["PUBLIC_BASE_URL"] + "/webhook/whatsapp"
    signature = {
        "none": None,
        "garbage": "c2lnbmF0dXJl",
        "other_url": sign("https://evil.example/webhook/whatsapp", form, env["TWILIO_AUTH_TOKEN"]),
        "other_form": sign(url, {**form, "Body": "/new stolen"}, env["TWILIO_AUTH_TOKEN"]),
        "valid": sign(url, form, env["TWILIO_AUTH_TOKEN"]),
    }[signing]
    sent_headers = dict(headers)
    if signature is not None:
        sent_headers["X-Twilio-Signature"] = signature

    answer = client.post(url, data=form, headers=sent_headers)

    assert answer.status_code < 500, answer.text
    assert "Traceback" not in answer.text
    stored = accepted(r, env, PHONE, sid)
    if signing != "valid":
        assert answer.status_code == 403
        assert answer.text == "forbidden"  # no detail for whoever is probing
        assert not stored
