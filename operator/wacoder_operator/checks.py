"""The promotion checks of a preview colour, over HTTP to `<bot>-preview`:

- `readyz`: GET /readyz answers 200 (the webhook reaches Redis).
- `syntheticMessage`: an unsigned POST /webhook/whatsapp is refused (403: signatures are checked
  with the bot's token); then `/help`, signed as Twilio signs a message (HMAC-SHA1 over
  PUBLIC_BASE_URL + path + the sorted form, keyed by the auth token), from the probe number
  (`PROBE_SENDER`, which belongs to nobody) is accepted, and its reply, read back with a signed
  GET /webhook/probe/{MessageSid}, is the help text. So the preview's webhook, agent and
  notifier each did their part, and nobody was texted: the notifier keeps a probe's reply for
  the operator instead of sending it through Twilio (wacoder.probe in the services).

The preview's base URL is a template (`WACODER_PREVIEW_URL`, default
`http://{bot}-preview.{namespace}.svc:8000`), so a test or a port-forward can serve it."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from typing import Protocol

import aiohttp

from wacoder_operator.rollout import CheckResult

DEFAULT_PREVIEW_URL = "http://{bot}-preview.{namespace}.svc:8000"
DEFAULT_PUBLIC_BASE_URL = "https://whatsapp.example.com"  # the chart's default PUBLIC_BASE_URL
DEFAULT_SENDER = "whatsapp:+14155238886"
ALL_CHECKS = ("readyz", "syntheticMessage")


def twilio_signature(auth_token: str, url: str, form: Mapping[str, str]) -> str:
    """Twilio's X-Twilio-Signature of a form POST, as the webhook checks it (HMAC-SHA1 of the
    URL and the sorted fields): the operator does not carry Twilio's SDK for one function."""
    payload = url + "".join(key + form[key] for key in sorted(form))
    digest = hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


# The number nobody has (area code 000 does not exist): the services answer it without texting.
# The same as the services' wacoder.probe.PROBE_SENDER (a test compares the two).
PROBE_SENDER = "+10000000000"
PROBE_BODY = "/help"
# What the reply to /help must hold: the command list names /help itself.
PROBE_EXPECTED = "/help"


class Checker(Protocol):
    async def run(
        self,
        bot: str,
        namespace: str,
        checks: Sequence[str],
        public_base_url: str,
        auth_token: str | None,
        recipient: str,
    ) -> CheckResult: ...


class HttpChecker:
    def __init__(
        self, url_template: str = DEFAULT_PREVIEW_URL, timeout_s: float = 10, reply_timeout_s: float = 20
    ) -> None:
        """`timeout_s` bounds each request; `reply_timeout_s`, how long the probe's reply may
        take to come through the preview's agent and notifier."""
        self.url_template, self.timeout_s, self.reply_timeout_s = url_template, timeout_s, reply_timeout_s

    async def run(
        self,
        bot: str,
        namespace: str,
        checks: Sequence[str],
        public_base_url: str,
        auth_token: str | None,
        recipient: str,
    ) -> CheckResult:
        base = self.url_template.format(bot=bot, namespace=namespace).rstrip("/")
        passed: list[str] = []
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as http:
                if "readyz" in checks:
                    async with http.get(f"{base}/readyz") as response:
                        if response.status != 200:
                            return CheckResult(False, f"readyz: HTTP {response.status} from {base}/readyz")
                    passed.append("readyz 200")
                if "syntheticMessage" in checks:
                    if not auth_token:
                        return CheckResult(
                            False, "syntheticMessage: no Twilio auth token in the bot's Secret"
                        )
                    problem = await self._message(http, base, public_base_url, auth_token, recipient)
                    if problem:
                        return CheckResult(False, f"syntheticMessage: {problem}")
                    passed.append("synthetic message answered")
        except (aiohttp.ClientError, TimeoutError) as error:
            return CheckResult(False, f"preview unreachable at {base}: {error!r}")
        return CheckResult(True, "; ".join(passed) or "no checks configured")

    async def _message(
        self,
        http: aiohttp.ClientSession,
        base: str,
        public_base_url: str,
        auth_token: str,
        recipient: str,
    ) -> str | None:
        """None when the preview verified signatures and answered the probe; else what went wrong."""
        public = public_base_url.rstrip("/")
        path = "/webhook/whatsapp"
        sid = "SM" + secrets.token_hex(16)
        form = {
            "From": f"whatsapp:{PROBE_SENDER}",
            "To": recipient,
            "Body": PROBE_BODY,
            "MessageSid": sid,
            "NumMedia": "0",
        }
        async with http.post(base + path, data=form) as unsigned:
            if unsigned.status != 403:
                return f"an unsigned message got HTTP {unsigned.status}, not 403"
        signature = twilio_signature(auth_token, public + path, form)
        async with http.post(base + path, data=form, headers={"X-Twilio-Signature": signature}) as response:
            body = await response.text()
            if response.status == 403:
                return "HTTP 403: the preview refused the signature (not the bot's auth token?)"
            if response.status != 200:
                return f"HTTP {response.status}"
            if "xml" not in response.headers.get("Content-Type", ""):
                return f"answered {response.headers.get('Content-Type')!r}, not TwiML"
        try:
            root = ET.fromstring(body)
        except ET.ParseError:
            return "the answer is not XML"
        if root.tag != "Response" or len(root):
            # A <Message> inside is a refusal (not authorized, rate limited): the probe was not taken.
            return f"the probe was not accepted: {body.strip()[:200]!r}"
        return await self._reply(http, base, public, auth_token, sid)

    async def _reply(
        self, http: aiohttp.ClientSession, base: str, public: str, auth_token: str, sid: str
    ) -> str | None:
        """Polls the preview for the probe's reply until it is there or `reply_timeout_s` ends."""
        path = f"/webhook/probe/{sid}"
        headers = {"X-Twilio-Signature": twilio_signature(auth_token, public + path, {})}
        deadline = time.monotonic() + self.reply_timeout_s
        while True:
            async with http.get(base + path, headers=headers) as response:
                text = await response.text()
                if response.status == 200:
                    if PROBE_EXPECTED in text:
                        return None
                    return f"the reply to {PROBE_BODY} is not the help text: {text[:200]!r}"
                if response.status != 404:
                    return f"reading the probe's reply: HTTP {response.status}"
            if time.monotonic() >= deadline:
                return (
                    f"no reply to the probe within {self.reply_timeout_s:g} s "
                    "(the preview's agent or notifier is not answering)"
                )
            await asyncio.sleep(0.2)
