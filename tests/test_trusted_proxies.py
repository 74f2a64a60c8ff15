"""TRUSTED_PROXIES: the webhook believes X-Forwarded-* only from the proxies it was told about,
and checks Twilio's signature over PUBLIC_BASE_URL whatever a proxy forwards.

A real webhook (alone: with no agent it stores messages in the inbox itself) behind a
"proxy" at 127.0.0.2, a loopback address of its own, while anyone else connects from
127.0.0.1. The scheme the webhook believes shows in the absolute URL of its redirects (a path
with a trailing slash is redirected to the route); X-Forwarded-For changes only the client
address, which nothing in the webhook reads or logs, so it is sent along but not observed."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import redis
from devtools.stack import Stack

from tests.harness import accepted, inbound, sign, start_stack

PROXY = "127.0.0.2"
PUBLIC = "https://bot.example.com"  # what Twilio calls, on the proxy; signatures cover it
PHONE = "+15557772001"


@pytest.fixture(scope="module")
def stack_overrides() -> dict[str, str]:
    return {"TRUSTED_PROXIES": PROXY, "PUBLIC_BASE_URL": PUBLIC}


@pytest.fixture(scope="module")
def stack(env: dict[str, str]) -> Iterator[Stack]:
    webhook = start_stack(env, ["webhook"])
    yield webhook
    webhook.stop()


@pytest.fixture(scope="module")
def local(env: dict[str, str]) -> str:
    """Where the webhook listens (not PUBLIC_BASE_URL: that is the proxy's)."""
    return f"http://127.0.0.1:{env['WEBHOOK_PORT']}"


def client(source: str) -> httpx.Client:
    """HTTP from `source` (a loopback address): the proxy, or anyone else."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=10)


FORWARDED = {
    "X-Forwarded-Proto": "https",
    "X-Forwarded-For": "203.0.113.7",
    "X-Forwarded-Host": "evil.example",
}


def test_forwarded_headers_are_honoured_from_the_trusted_proxy_only(stack: Stack, local: str) -> None:
    port = local.rsplit(":", 1)[1]
    for source, scheme in ((PROXY, "https"), ("127.0.0.1", "http")):
        with client(source) as http:
            redirect = http.post(f"{local}/webhook/whatsapp/", data={"Body": "x"}, headers=FORWARDED)
        assert redirect.status_code == 307, (source, redirect.text)
        # The forwarded scheme is believed from the proxy alone; X-Forwarded-Host from nobody.
        assert redirect.headers["location"] == f"{scheme}://127.0.0.1:{port}/webhook/whatsapp"


def test_the_signature_is_checked_over_public_base_url_behind_the_proxy(
    stack: Stack, env: dict[str, str], local: str
) -> None:
    r = redis.Redis.from_url(env["REDIS_URL"], decode_responses=True)
    token = env["TWILIO_AUTH_TOKEN"]
    port = local.rsplit(":", 1)[1]
    # What the webhook sees, with and without the forwarded scheme: neither is what Twilio signed.
    seen = [f"{local}/webhook/whatsapp", f"https://127.0.0.1:{port}/webhook/whatsapp"]
    seen.append("https://evil.example/webhook/whatsapp")
    for n, url in enumerate(seen):
        form = inbound(PHONE, "/help", f"SMproxy{n:027d}")
        with client(PROXY) as http:
            refused = http.post(
                f"{local}/webhook/whatsapp",
                data=form,
                headers={**FORWARDED, "X-Twilio-Signature": sign(url, form, token)},
            )
        assert (refused.status_code, refused.text) == (403, "forbidden"), url
        assert not accepted(r, env, PHONE, form["MessageSid"])

    form = inbound(PHONE, "/help", f"SMproxy{99:027d}")
    signature = sign(f"{PUBLIC}/webhook/whatsapp", form, token)
    for source in (PROXY, "127.0.0.1"):
        with client(source) as http:
            answer = http.post(
                f"{local}/webhook/whatsapp",
                data=form,
                headers={**FORWARDED, "X-Twilio-Signature": signature},
            )
        assert answer.status_code == 200, answer.text
        assert accepted(r, env, PHONE, form["MessageSid"])
