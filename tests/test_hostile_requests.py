"""A property-based corpus of hostile requests against a real webhook: random forms, header
tricks (forwarded host and scheme, a spoofed Host), and signatures that are valid for some other
URL, the other webhook path, or some other form. None may yield a 5xx; nothing that is not
signed for exactly this URL and form may reach the agent's inbox or the delivery records, and
what is signed so is taken. Both of Twilio's paths: messages and status callbacks."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import httpx
import pytest
import redis
from devtools.stack import Stack
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from wacoder import keys

from tests.harness import ACCOUNT_SID, BOT_NUMBER, accepted, inbound, post_signed, sign, user_of

PHONE = "+15557770001"
_sids = itertools.count(1)

# Field names Twilio sends, and others; values from anywhere in Unicode (no surrogates: a form
# cannot carry them).
field_names = st.sampled_from(
    ["From", "To", "Body", "MessageSid", "NumMedia", "MediaUrl0", "ProfileName", "WaId", "X", "Body[]"]
)
field_values = st.text(st.characters(exclude_categories=["Cs"]), max_size=300)
# Half the forms only add or change fields that leave the message what it was (so that a
# valid signature is seen to be taken), half anything.
harmless_names = st.sampled_from(["To", "Body", "MediaUrl0", "ProfileName", "WaId", "X", "Body[]"])
extra_fields = st.one_of(
    st.dictionaries(harmless_names, field_values, max_size=6),
    st.dictionaries(field_names, field_values, max_size=6),
)
header_tricks = st.fixed_dictionaries(
    {},
    optional={
        "X-Forwarded-Host": st.sampled_from(["evil.example", "127.0.0.1:1", ""]),
        "X-Forwarded-Proto": st.sampled_from(["https", "gopher", ""]),
        "Host": st.sampled_from(["evil.example", "localhost:1"]),
        "X-Forwarded-For": st.sampled_from(["1.2.3.4", "::1"]),
    },
)
# How the request is signed: not at all, garbage, over another URL, over the other webhook path
# (a replay across paths), over another form, properly.
# Each gets examples of its own (a drawn choice would mostly be the first).
SIGNINGS = ["none", "garbage", "other_url", "other_path", "other_form", "valid"]
# The other path of each: a signature Twilio made for one is replayed on the other.
OTHER_PATH = {"/webhook/whatsapp": "/webhook/status", "/webhook/status": "/webhook/whatsapp"}


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as http:
        yield http


@pytest.fixture(scope="module")
def r(env: dict[str, str]) -> redis.Redis:
    return redis.Redis.from_url(env["REDIS_URL"], decode_responses=True)


@pytest.mark.parametrize("signing", SIGNINGS)
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(extra=extra_fields, headers=header_tricks)
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
    answer = client.post(url, data=form, headers=signed(env, "/webhook/whatsapp", form, signing, headers))

    assert answer.status_code < 500, answer.text
    assert "Traceback" not in answer.text
    stored = accepted(r, env, PHONE, sid)
    if signing != "valid":
        assert answer.status_code == 403
        assert answer.text == "forbidden"  # no detail for whoever is probing
        assert not stored
    elif not {"From", "NumMedia"} & set(extra):
        # Signed for exactly this: taken and stored, whatever else the form and headers carry
        # (another sender, or a NumMedia that is not a number, legitimately change the answer).
        assert answer.status_code == 200, answer.text
        assert stored
        event("validly signed: stored")  # --hypothesis-show-statistics: how often this ran


def signed(
    env: dict[str, str], path: str, form: dict[str, str], signing: str, headers: dict[str, str]
) -> dict[str, str]:
    """`headers` with the X-Twilio-Signature that `signing` says for `form` posted to `path`."""
    url = env["PUBLIC_BASE_URL"] + path
    token = env["TWILIO_AUTH_TOKEN"]
    signature = {
        "none": None,
        "garbage": "c2lnbmF0dXJl",
        "other_url": sign(f"https://evil.example{path}", form, token),
        "other_path": sign(env["PUBLIC_BASE_URL"] + OTHER_PATH[path], form, token),
        "other_form": sign(url, {**form, "Body": "/new stolen", "MessageStatus": "read"}, token),
        "valid": sign(url, form, token),
    }[signing]
    sent = dict(headers)
    if signature is not None:
        sent["X-Twilio-Signature"] = signature
    return sent


status_names = st.sampled_from(
    ["MessageSid", "MessageStatus", "To", "From", "ErrorCode", "SmsSid", "SmsStatus", "X", "MessageSid[]"]
)
status_extra = st.one_of(
    st.dictionaries(st.sampled_from(["From", "ErrorCode", "X", "MessageSid[]"]), field_values, max_size=4),
    st.dictionaries(status_names, field_values, max_size=6),
)
# The fields that decide which delivery record a callback writes, if any.
RECORD_FIELDS = {"MessageSid", "MessageStatus", "To", "SmsSid", "SmsStatus"}


def status_form(sid: str) -> dict[str, str]:
    """What Twilio posts when a message we sent to PHONE was delivered."""
    return {
        "MessageSid": sid,
        "SmsSid": sid,
        "AccountSid": ACCOUNT_SID,
        "From": BOT_NUMBER,
        "To": f"whatsapp:{PHONE}",
        "MessageStatus": "delivered",
        "SmsStatus": "delivered",
        "ApiVersion": "2010-04-01",
    }


def recorded(r: redis.Redis, env: dict[str, str], sid: str, to: str = PHONE) -> bool:
    """Whether a delivery record of `sid` exists (placed by the callback's `To`)."""
    return bool(r.exists(keys.delivery(user_of(env, to), sid)))


@pytest.mark.parametrize("signing", SIGNINGS)
@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
@given(extra=status_extra, headers=header_tricks)
def test_hostile_status_callbacks_never_yield_a_5xx_nor_record_unsigned(
    client: httpx.Client,
    env: dict[str, str],
    r: redis.Redis,
    extra: dict[str, str],
    headers: dict[str, str],
    signing: str,
) -> None:
    sid = f"SMstatus{next(_sids):026d}"
    form = {**status_form(sid), **extra}
    url = env["PUBLIC_BASE_URL"] + "/webhook/status"

    answer = client.post(url, data=form, headers=signed(env, "/webhook/status", form, signing, headers))

    assert answer.status_code < 500, answer.text
    assert "Traceback" not in answer.text
    if signing != "valid":
        assert (answer.status_code, answer.text) == (403, "forbidden")
        assert not recorded(r, env, sid)
    elif not RECORD_FIELDS & set(extra):
        assert answer.status_code == 204, answer.text
        assert recorded(r, env, sid)
        event("validly signed: recorded")


def test_a_signature_replayed_on_the_other_path_is_refused(
    client: httpx.Client, env: dict[str, str], r: redis.Redis
) -> None:
    # One form that either path would take: a message that also reads as a status callback.
    sid = f"SMreplay{next(_sids):026d}"
    form = {**inbound(PHONE, "/help", sid), "MessageStatus": "delivered"}
    for path in OTHER_PATH:
        answer = client.post(
            env["PUBLIC_BASE_URL"] + path, data=form, headers=signed(env, path, form, "other_path", {})
        )
        assert (answer.status_code, answer.text) == (403, "forbidden"), path
    assert not accepted(r, env, PHONE, sid) and not recorded(r, env, sid, BOT_NUMBER)
    # Signed for where it is posted, the very same form is taken by each.
    assert post_signed(env, "/webhook/whatsapp", form).status_code == 200
    assert post_signed(env, "/webhook/status", form).status_code == 204
    assert accepted(r, env, PHONE, sid) and recorded(r, env, sid, BOT_NUMBER)
