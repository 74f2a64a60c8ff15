"""The promotion checks of a preview colour, over HTTP to `<bot>-preview`:

- `readyz`: GET /readyz answers 200 (the webhook reaches Redis).
- `syntheticMessage`: an unsigned POST /webhook/whatsapp is refused (403: signatures are checked
  with the bot's token), then one message signed like Twilio signs it (HMAC-SHA1 over
  PUBLIC_BASE_URL + path + the sorted form, keyed by the auth token) from a number that is not
  on the whitelist gets 200 with a TwiML <Response>. Nobody is texted: a refused sender's
  answer is TwiML in the HTTP reply itself, never a send through Twilio's REST API.

The preview's base URL is a template (`WACODER_PREVIEW_URL`, default
`http://{bot}-preview.{namespace}.svc:8000`), so a test or a port-forward can serve it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
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


def synthetic_sender(whitelist: Sequence[str]) -> str:
    """A fictional number (+1 555 01xx) that is not on the whitelist."""
    return next(n for n in (f"+1555010{i:04d}" for i in range(10000)) if n not in whitelist)


class Checker(Protocol):
    async def run(
        self,
        bot: str,
        namespace: str,
        checks: Sequence[str],
        public_base_url: str,
        auth_token: str | None,
        recipient: str,
        whitelist: Sequence[str],
    ) -> CheckResult: ...


class HttpChecker:
    def __init__(self, url_template: str = DEFAULT_PREVIEW_URL, timeout_s: float = 10) -> None:
        self.url_template, self.timeout_s = url_template, timeout_s

    async def run(
        self,
        bot: str,
        namespace: str,
        checks: Sequence[str],
        public_base_url: str,
        auth_token: str | None,
        recipient: str,
        whitelist: Sequence[str],
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
                    problem = await self._message(
                        http, base, public_base_url, auth_token, recipient, whitelist
                    )
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
        whitelist: Sequence[str],
    ) -> str | None:
        """None when the preview verified signatures and answered; else what went wrong."""
        path = "/webhook/whatsapp"
        form = {
            "From": f"whatsapp:{synthetic_sender(whitelist)}",
            "To": recipient,
            "Body": "wacoder-operator promotion check",
            "MessageSid": "SM" + secrets.token_hex(16),
            "NumMedia": "0",
        }
        async with http.post(base + path, data=form) as unsigned:
            if unsigned.status != 403:
                return f"an unsigned message got HTTP {unsigned.status}, not 403"
        signature = twilio_signature(auth_token, public_base_url.rstrip("/") + path, form)
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
        return None if root.tag == "Response" else f"the answer is <{root.tag}>, not <Response>"
