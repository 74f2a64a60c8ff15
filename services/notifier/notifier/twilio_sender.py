"""Sending one message through Twilio's Messages REST API with the official `twilio` client,
turning every outcome into a `SendOutcome` the outbox worker can act on.

The client's HTTP layer is replaced by a subclass of `AsyncTwilioHttpClient` that
- rewrites https://api.twilio.com to TWILIO_API_BASE_URL (a local simulator in dev/tests);
- bounds every request with a timeout (the stock client leaves aiohttp's 5-minute default);
- captures the response status and headers, because `TwilioRestException` does not carry
  them and a 429's Retry-After is exactly what the retry policy needs.

`find_accepted` asks Twilio's Messages list API whether an earlier attempt of ours got there
(reconciliation after a crash or an unanswered request, see ADR 0003).
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from opentelemetry.trace import Span, SpanKind
from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client
from wacoder import tracing
from wacoder.settings import Settings

from notifier.backoff import parse_retry_after

TWILIO_API = "https://api.twilio.com"
# The recipient is outside WhatsApp's 24-hour customer-service window.
OUTSIDE_WINDOW = 63016
# Tolerance between our clock and Twilio's date_created (whole seconds) when matching a
# message to an attempt; an older identical message is excluded by its own delivery record.
CLOCK_SKEW_S = 5.0
# More than one recipient gets from us in the minutes a reconciliation looks back on.
FIND_LIMIT = 200


@dataclass
class _Captured:
    """The raw response of the request made in the current task (see `_captured`)."""

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)


# One sender serves many concurrent sends; a context variable holding a per-call box lets
# each send see the headers of its own response, not of whichever finished last.
_captured: contextvars.ContextVar[_Captured | None] = contextvars.ContextVar("twilio_captured", default=None)


class RewritingHttpClient(AsyncTwilioHttpClient):
    def __init__(self, base_url: str, timeout_s: float = 15.0) -> None:
        super().__init__(pool_connections=False, timeout=timeout_s)
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        # Our own session (created in the running loop), with a real ClientTimeout.
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s))

    def rewrite(self, url: str) -> str:
        if url.startswith(TWILIO_API):
            return self.base_url + url[len(TWILIO_API) :]
        return url

    async def request(
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the base class's signature
        allow_redirects: bool = False,
    ) -> Response:
        assert self.session is not None
        basic_auth = aiohttp.BasicAuth(login=auth[0], password=auth[1]) if auth else None
        async with self.session.request(
            method.upper(),
            self.rewrite(url),
            params=params,  # type: ignore[arg-type]
            data=data,
            headers=headers,
            auth=basic_auth,
            timeout=aiohttp.ClientTimeout(total=timeout or self.timeout_s),
            allow_redirects=allow_redirects,
        ) as response:
            text = await response.text()
            box = _captured.get()
            if box is not None:
                box.status = response.status
                box.headers = {k.lower(): v for k, v in response.headers.items()}
            return Response(response.status, text, response.headers)


@dataclass(frozen=True)
class SendOutcome:
    """What happened to one attempt. Exactly one of: `sid` set (accepted), or an error."""

    sid: str | None = None
    status: int | None = None  # HTTP status, None for a connection error
    error_code: int | None = None  # Twilio's error code
    retry_after_s: float | None = None
    detail: str = ""
    # The connection was never made, so the request cannot have reached Twilio.
    never_connected: bool = False

    @property
    def accepted(self) -> bool:
        return self.sid is not None

    @property
    def outside_window(self) -> bool:
        return self.error_code == OUTSIDE_WINDOW

    @property
    def retryable(self) -> bool:
        """429, 5xx and no answer at all are worth another try; any other 4xx will not change."""
        if self.accepted:
            return False
        return self.status is None or self.status == 429 or self.status >= 500

    @property
    def may_have_reached_twilio(self) -> bool:
        """No answer, or a 5xx: Twilio may have created the message anyway. A 429 or 4xx is a
        refusal; an acceptance is known."""
        if self.accepted or self.never_connected:
            return False
        return self.status is None or self.status >= 500


@dataclass(frozen=True)
class FindOutcome:
    """The messages Twilio has that match an earlier attempt (oldest first), or why we could
    not ask (`error`, a SendOutcome-like failure for the retry policy)."""

    sids: list[str] = field(default_factory=list)
    error: SendOutcome | None = None


# How a span names the Messages API: its route, not the URL (whose Account SID is ours to keep).
_MESSAGES_ROUTE = "/2010-04-01/Accounts/{AccountSid}/Messages.json"


def _describe(span: Span, outcome: SendOutcome) -> None:
    """What the SRE reading the trace needs: the HTTP status and Twilio's error code."""
    if outcome.status is not None:
        span.set_attribute("http.response.status_code", outcome.status)
    if outcome.error_code is not None:
        span.set_attribute("twilio.error_code", outcome.error_code)
    if outcome.sid is not None:
        span.set_attribute("twilio.message_sid", outcome.sid)  # what the status callbacks name
    if not outcome.accepted:
        error = str(outcome.status) if outcome.status is not None else outcome.detail or "no_answer"
        span.set_attribute("error.type", error)
        tracing.fail(span, error)


class TwilioSender:
    def __init__(self, settings: Settings) -> None:
        self.timeout_s = settings.notifier_twilio_timeout_s
        self.http = RewritingHttpClient(settings.twilio_api_base_url, self.timeout_s)
        self.client = Client(
            settings.twilio_account_sid, settings.secret("twilio_auth_token"), http_client=self.http
        )
        # Through a Messaging Service Twilio picks the sender; else our one number sends.
        self.service_sid = settings.twilio_messaging_service_sid
        self.sender: dict[str, str] = (
            {"messaging_service_sid": self.service_sid}
            if self.service_sid
            else {"from_": settings.twilio_whatsapp_number}
        )
        self.status_callback = settings.public_base_url.rstrip("/") + "/webhook/status"
        self.server_address = urlsplit(settings.twilio_api_base_url).hostname or ""

    async def send(self, to: str, body: str, media_urls: Sequence[str] = ()) -> SendOutcome:
        """One POST to the Messages API, as a CLIENT span with its HTTP status and Twilio's
        error code (the recipient and the text stay out of it)."""
        with self._span("POST", _MESSAGES_ROUTE) as span:
            outcome = await self._send(to, body, media_urls)
            _describe(span, outcome)
            return outcome

    def _span(self, method: str, route: str) -> AbstractContextManager[Span]:
        return tracing.span(
            f"{method} {route}",
            kind=SpanKind.CLIENT,
            attributes={
                "http.request.method": method,
                "url.template": route,
                "server.address": self.server_address,
                "peer.service": "twilio",
            },
        )

    async def _send(self, to: str, body: str, media_urls: Sequence[str]) -> SendOutcome:
        box = _Captured()
        token = _captured.set(box)
        kwargs: dict[str, Any] = {"to": to, **self.sender, "status_callback": self.status_callback}
        if body:
            kwargs["body"] = body
        if media_urls:
            kwargs["media_url"] = list(media_urls)
        try:
            message = await self.client.messages.create_async(**kwargs)
        except (TwilioRestException, TwilioServiceException) as exc:
            code = exc.code if isinstance(exc.code, int) else None
            return SendOutcome(
                status=exc.status,
                error_code=code,
                retry_after_s=parse_retry_after(box.headers.get("retry-after")),
                detail=type(exc).__name__,
            )
        except aiohttp.ClientConnectorError as exc:
            return SendOutcome(detail=type(exc).__name__, never_connected=True)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return SendOutcome(detail=type(exc).__name__)
        finally:
            _captured.reset(token)
        return SendOutcome(sid=message.sid, status=box.status)

    async def find_accepted(self, to: str, body: str, since: float) -> FindOutcome:
        """Messages from our number to `to` with exactly `body`, created at or after `since`
        (epoch seconds, less the clock skew), oldest first.

        Twilio's DateSent filter works on whole days (the client sends `DateSent>=` with the
        datetime, Twilio reads the date), so the exact bound is applied here on date_created.
        """
        with self._span("GET", _MESSAGES_ROUTE) as span:
            found = await self._find_accepted(to, body, since)
            if found.error is not None:
                _describe(span, found.error)
            else:
                span.set_attribute("http.response.status_code", 200)
                span.set_attribute("wacoder.matches", len(found.sids))
            return found

    async def _find_accepted(self, to: str, body: str, since: float) -> FindOutcome:
        bound = math.floor(since - CLOCK_SKEW_S)
        day = datetime.fromtimestamp(bound, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        box = _Captured()
        token = _captured.set(box)
        try:
            # Through a Messaging Service the sender varies: list by recipient, match the service.
            by_sender = {k: v for k, v in self.sender.items() if k == "from_"}
            found = await self.client.messages.list_async(
                to=to, **by_sender, date_sent_after=day, limit=FIND_LIMIT
            )
        except (TwilioRestException, TwilioServiceException) as exc:
            code = exc.code if isinstance(exc.code, int) else None
            # Whatever Twilio answers here, it says nothing about the message: retry later.
            status = exc.status if exc.status == 429 or (exc.status or 0) >= 500 else 503
            return FindOutcome(
                error=SendOutcome(
                    status=status,
                    error_code=code,
                    retry_after_s=parse_retry_after(box.headers.get("retry-after")),
                    detail=f"reconcile:{type(exc).__name__}",
                )
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return FindOutcome(error=SendOutcome(detail=f"reconcile:{type(exc).__name__}"))
        finally:
            _captured.reset(token)
        matches = [
            m
            for m in found
            if (m.body or "") == body
            and m.date_created is not None
            and m.date_created.timestamp() >= bound
            and (not self.service_sid or m.messaging_service_sid == self.service_sid)
        ]
        matches.sort(key=lambda m: m.date_created.timestamp() if m.date_created else 0.0)
        return FindOutcome(sids=[m.sid for m in matches if m.sid])

    async def close(self) -> None:
        await self.http.close()
