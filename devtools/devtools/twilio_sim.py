"""A local stand-in for Twilio, speaking its wire protocol both ways.

Towards us it is Twilio's Messages REST API: the notifier sends to it, the tests read back
what was sent, and it can be told to fail (429 with Retry-After, 5xx, error codes such as
63016) to exercise retries. Back to us it does what Twilio does for a WhatsApp user: signs and
posts inbound messages (with media it hosts) to the webhook, and posts signed status callbacks
(sent, delivered, and read once the user has seen a message). The simulator page
(devtools.simulator), `make chat` and the tests' stand-in all run this one implementation.

    POST /2010-04-01/Accounts/{sid}/Messages.json   Twilio's endpoint (basic auth SID:token)
    GET  /2010-04-01/Accounts/{sid}/Messages.json   Twilio's list: newest first, paged (PageSize,
                                                     Page, PageToken; next_page_uri), filtered by
                                                     To, From, DateSent / DateSent< / DateSent>
                                                     on the UTC date only, as Twilio does
    GET  /_sim/messages                              every message accepted so far
    DELETE /_sim/messages                            forget them (and the users' messages)
    GET  /2010-04-01/Accounts/{sid}/Messages/{MM}/Media/{ME}   a user's attachment, as Twilio hosts it
                                                     (basic auth optional, as by default at Twilio;
                                                     wrong credentials: 401; each fetch is noted
                                                     in /_sim/messages' "media_fetches")
    POST /_sim/media    the raw bytes of an attachment (its Content-Type header says the type):
                        hosts it and answers {"url": its Twilio-shaped MediaUrl} (tests send it)
    POST /_sim/script   {"responses": [{"status": 429, "headers": {...}, "code": 20429}],
                         "always": {"status": 500} | null, "delay_s": 0.0}
                         (delay_s: how long every Messages request takes to answer, so a test
                         can catch a client with requests in flight; a scripted response may
                         carry its own "delay_s" too)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import logging
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any
from urllib.parse import urlencode

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from twilio.request_validator import RequestValidator

log = logging.getLogger("devtools.twilio_sim")

# What a message looks like in Twilio's JSON; the sim's own bookkeeping (received_at, ...) stays out.
_MESSAGE_FIELDS = (
    "sid",
    "account_sid",
    "from",
    "to",
    "messaging_service_sid",
    "body",
    "status",
    "num_segments",
    "num_media",
    "direction",
    "api_version",
    "date_created",
    "date_updated",
    "date_sent",
    "price",
    "error_code",
    "error_message",
    "uri",
)
LIST_PAGE_SIZE = 50
# The sender a Messaging Service picks from its pool, in the sim (Twilio chooses one per message).
MESSAGING_SERVICE_SENDER = "whatsapp:+14155238886"
LIST_MAX_PAGE_SIZE = 1000
# Attachments users sent, kept in memory: the newest ones only (a dev tool, not a media store).
MEDIA_KEPT = 100
MEDIA_MAX_BYTES = 16 * 1024 * 1024  # WhatsApp's limit for audio and video
# Events queued for a listener (a page, `make chat`) that does not read them: it is dropped.
LISTENER_BACKLOG = 1000
# Between a message's status callbacks (queued -> sent -> delivered).
STATUS_STEP_S = 0.05


@dataclass
class SimState:
    account_sid: str
    auth_token: str
    status_callbacks: bool = False
    messages: list[dict[str, Any]] = field(default_factory=list)
    scripted: list[dict[str, Any]] = field(default_factory=list)
    always: dict[str, Any] | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    delay_s: float = 0.0
    on_message: Callable[[dict[str, Any]], None] | None = None
    # Playing the users' side: where their messages go, and the number they write to.
    webhook_url: str | None = None
    bot_number: str = MESSAGING_SERVICE_SENDER
    # The users' messages as posted to the webhook, with its answer.
    inbound: list[dict[str, Any]] = field(default_factory=list)
    media: OrderedDict[str, tuple[str, bytes]] = field(default_factory=OrderedDict)
    media_fetches: list[dict[str, Any]] = field(default_factory=list)
    listeners: set[asyncio.Queue[dict[str, Any] | None]] = field(default_factory=set)

    def subscribe(self) -> asyncio.Queue[dict[str, Any] | None]:
        """A queue of every event from now on: messages both ways, their statuses."""
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(LISTENER_BACKLOG)
        self.listeners.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any] | None]) -> None:
        self.listeners.discard(queue)

    def publish(self, event: dict[str, Any]) -> None:
        for queue in list(self.listeners):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                self.listeners.discard(queue)
                log.warning("a listener fell behind and was dropped")

    def timeline(self, phone: str) -> list[dict[str, Any]]:
        """One user's conversation, both ways, oldest first, as events would have told it."""
        user = f"whatsapp:{phone}"
        found = [inbound_event(m) for m in self.inbound if m["from"] == user]
        found += [outbound_event(m) for m in self.messages if m["to"] == user]
        return sorted(found, key=lambda e: float(e["message"]["at"]))


def outbound_event(record: dict[str, Any]) -> dict[str, Any]:
    """A message the bot sent, as listeners see it."""
    keep = ("sid", "from", "to", "body", "status", "media_urls")
    return {"type": "outbound", "message": {**{k: record.get(k) for k in keep}, "at": record["received_at"]}}


def inbound_event(record: dict[str, Any]) -> dict[str, Any]:
    """A message a user sent, as listeners see it (with the webhook's answer once known)."""
    keep = ("sid", "from", "to", "body", "media", "status", "answer", "reply")
    return {"type": "inbound", "message": {**{k: record.get(k) for k in keep}, "at": record["at"]}}


def _error(status: int, code: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return JSONResponse(body, status_code=status, headers=headers)


def _authorized(request: Request, state: SimState) -> bool:
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("basic "):
        return False
    try:
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
    except ValueError:
        return False
    return secrets.compare_digest(user, state.account_sid) and secrets.compare_digest(
        password, state.auth_token
    )


def sign(state: SimState, url: str, params: dict[str, str]) -> str:
    """X-Twilio-Signature: what Twilio sends with every request it makes to us."""
    return str(RequestValidator(state.auth_token).compute_signature(url, params))


async def _post_status(
    state: SimState, client: httpx.AsyncClient, record: dict[str, Any], status: str
) -> None:
    """One status callback, signed as Twilio signs it; the message's status moves with it."""
    url = record.get("status_callback")
    record["status"] = status
    record["date_updated"] = format_datetime(datetime.now(UTC))
    state.publish({"type": "status", "sid": record["sid"], "to": record["to"], "status": status})
    if not url:
        return
    params = {
        "MessageSid": record["sid"],
        "SmsSid": record["sid"],
        "MessageStatus": status,
        "SmsStatus": status,
        "AccountSid": state.account_sid,
        "From": record["from"],
        "To": record["to"],
        "ApiVersion": "2010-04-01",
    }
    try:
        await client.post(
            str(url), data=params, headers={"X-Twilio-Signature": sign(state, str(url), params)}
        )
    except httpx.HTTPError:
        log.warning("status callback failed")


async def _send_status_callbacks(state: SimState, record: dict[str, Any]) -> None:
    """Twilio posts queued -> sent -> delivered to StatusCallback, signed with the auth token."""
    async with httpx.AsyncClient(timeout=5) as client:
        for status in ("sent", "delivered"):
            await asyncio.sleep(STATUS_STEP_S)
            await _post_status(state, client, record, status)


async def mark_read(state: SimState, phone: str) -> int:
    """The user opened the chat: every message delivered to them is read (a `read` callback
    each, as WhatsApp reports read receipts). Returns how many."""
    user = f"whatsapp:{phone}"
    unread = [m for m in state.messages if m["to"] == user and m.get("status") == "delivered"]
    async with httpx.AsyncClient(timeout=5) as client:
        for record in unread:
            await _post_status(state, client, record, "read")
    return len(unread)


def media_url(state: SimState, base_url: str, message_sid: str, media_sid: str) -> str:
    message = f"/2010-04-01/Accounts/{state.account_sid}/Messages/{message_sid}"
    return f"{base_url.rstrip('/')}{message}/Media/{media_sid}"


def keep_media(state: SimState, content_type: str, data: bytes) -> str:
    """Stores a user's attachment; its media sid (ME...)."""
    media_sid = "ME" + secrets.token_hex(16)
    state.media[media_sid] = (content_type, data)
    while len(state.media) > MEDIA_KEPT:
        state.media.popitem(last=False)
    return media_sid


async def send_inbound(
    state: SimState,
    client: httpx.AsyncClient,
    phone: str,
    body: str,
    media: Sequence[tuple[str, bytes]] = (),
    base_url: str = "",
    profile_name: str = "",
) -> dict[str, Any]:
    """A WhatsApp user's message, posted to the webhook exactly as Twilio posts it: the form
    fields Twilio sends, attachments as NumMedia/MediaUrlN/MediaContentTypeN (hosted here, at
    `base_url`), signed over the webhook's URL. Returns the message with the webhook's answer."""
    if state.webhook_url is None:
        raise RuntimeError("no webhook to post to")
    # Twilio names a message with media MM..., a text SM...
    sid = ("MM" if media else "SM") + secrets.token_hex(16)
    urls = [
        (media_url(state, base_url, sid, keep_media(state, content_type, data)), content_type)
        for content_type, data in media
    ]
    form = {
        "SmsMessageSid": sid,
        "SmsSid": sid,
        "MessageSid": sid,
        "AccountSid": state.account_sid,
        "From": f"whatsapp:{phone}",
        "To": state.bot_number,
        "Body": body,
        "NumMedia": str(len(urls)),
        "NumSegments": "1",
        "ReferralNumMedia": "0",
        "MessageType": _message_type(urls[0][1]) if urls else "text",
        "ProfileName": profile_name or phone,
        "WaId": phone.lstrip("+"),
        "SmsStatus": "received",
        "ApiVersion": "2010-04-01",
    }
    for i, (url, content_type) in enumerate(urls):
        form[f"MediaUrl{i}"] = url
        form[f"MediaContentType{i}"] = content_type
    record: dict[str, Any] = {
        "sid": sid,
        "from": form["From"],
        "to": form["To"],
        "body": body,
        "media": [{"url": url, "content_type": content_type} for url, content_type in urls],
        "form": form,
        "status": "sending",
        "answer": None,
        "reply": None,
        "at": time.time(),
    }
    state.inbound.append(record)
    state.publish(inbound_event(record))
    try:
        answer = await client.post(
            state.webhook_url, data=form, headers={"X-Twilio-Signature": sign(state, state.webhook_url, form)}
        )
        record["answer"] = answer.status_code
        record["status"] = "accepted" if answer.status_code == 200 else "failed"
        # A reply in the TwiML answer (a refusal the user should hear) is a message to the user.
        if answer.status_code == 200 and (found := re.search(r"<Message>(.*?)</Message>", answer.text, re.S)):
            record["reply"] = _xml_text(found.group(1))
    except httpx.HTTPError as error:
        record["status"] = "failed"
        log.warning("webhook unreachable: %s", error)
    state.publish(inbound_event(record))
    return record


def _message_type(content_type: str) -> str:
    kind = content_type.partition("/")[0]
    return {"image": "image", "audio": "audio", "video": "video"}.get(kind, "document")


def _xml_text(text: str) -> str:
    for escaped, plain in (("&lt;", "<"), ("&gt;", ">"), ("&quot;", '"'), ("&apos;", "'"), ("&amp;", "&")):
        text = text.replace(escaped, plain)
    return text


def _filter_date(value: str) -> date | None:
    """Twilio's DateSent filters compare dates: `2024-05-01` or a datetime, whose time is ignored."""
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        return None


def _sent_on(message: dict[str, Any]) -> date | None:
    sent = message.get("date_sent")
    return parsedate_to_datetime(sent).astimezone(UTC).date() if sent else None


def _matches(message: dict[str, Any], query: dict[str, str]) -> bool:
    if "To" in query and message["to"] != query["To"]:
        return False
    if "From" in query and message["from"] != query["From"]:
        return False
    sent = _sent_on(message)
    for name, keep in (
        ("DateSent", lambda d, f: d == f),
        ("DateSent>", lambda d, f: d >= f),
        ("DateSent<", lambda d, f: d <= f),
    ):
        if name in query:
            bound = _filter_date(query[name])
            if bound is None or sent is None or not keep(sent, bound):
                return False
    return True


def _list_page(state: SimState, sid: str, query: dict[str, str]) -> dict[str, Any]:
    """One page of Twilio's Messages list, newest first, with its paging links."""
    size = min(max(int(query.get("PageSize") or LIST_PAGE_SIZE), 1), LIST_MAX_PAGE_SIZE)
    page = max(int(query.get("Page") or 0), 0)
    found = [m for m in reversed(state.messages) if _matches(m, query)]
    start = page * size
    chunk = found[start : start + size]
    base = f"/2010-04-01/Accounts/{sid}/Messages.json"
    filters = {k: v for k, v in query.items() if k in ("To", "From", "DateSent", "DateSent>", "DateSent<")}

    def uri(number: int) -> str:
        return (
            f"{base}?{urlencode({**filters, 'PageSize': size, 'Page': number, 'PageToken': f'PA{number}'})}"
        )

    return {
        "messages": [{k: m.get(k) for k in _MESSAGE_FIELDS} for m in chunk],
        "end": start + len(chunk) - 1 if chunk else start,
        "first_page_uri": uri(0),
        "next_page_uri": uri(page + 1) if start + size < len(found) else None,
        "page": page,
        "page_size": size,
        "previous_page_uri": uri(page - 1) if page > 0 else None,
        "start": start,
        "uri": f"{base}?{urlencode({**filters, 'PageSize': size, 'Page': page})}",
    }


def build_app(state: SimState, routes: list[BaseRoute] | None = None) -> Starlette:
    """Twilio's endpoints over `state`, and `routes` beside them (the simulator page's)."""

    async def create_message(request: Request) -> Response:
        sid = request.path_params["sid"]
        form = await request.form()
        state.attempts.append({"at": time.time(), "to": form.get("To"), "body": form.get("Body")})
        if not _authorized(request, state) or sid != state.account_sid:
            return _error(401, 20003, "Authenticate")
        scripted: dict[str, Any] | None = None
        if state.scripted or state.always:
            scripted = state.scripted.pop(0) if state.scripted else state.always
        delay = float((scripted or {}).get("delay_s", state.delay_s))
        if delay > 0:
            await asyncio.sleep(delay)
        if scripted is not None and scripted.get("status", 201) >= 300:
            return _error(
                scripted["status"],
                scripted.get("code", 20500),
                scripted.get("message", "Scripted"),
                scripted.get("headers"),
            )
        # A Messaging Service sends from one of its senders: the sim's pool has one per service.
        service = form.get("MessagingServiceSid")
        sender = form.get("From") or (MESSAGING_SERVICE_SENDER if service else None)
        if not form.get("To"):
            return _error(400, 21604, "A 'To' phone number is required.")
        if not sender:
            return _error(400, 21603, "A 'From' or 'MessagingServiceSid' parameter is required.")
        if not form.get("Body") and not form.get("MediaUrl"):
            return _error(400, 21602, "Message body is required.")
        body = str(form.get("Body", ""))
        if len(body) > 1600:
            return _error(400, 21617, "The concatenated message body exceeds the 1600 character limit.")
        now = format_datetime(datetime.now(UTC))
        message = {
            "sid": "SM" + secrets.token_hex(16),
            "account_sid": sid,
            "from": sender,
            "to": form.get("To"),
            "messaging_service_sid": service,
            "body": body,
            "status": "queued",
            "num_segments": "1",
            "num_media": str(len(form.getlist("MediaUrl"))),
            "direction": "outbound-api",
            "api_version": "2010-04-01",
            "date_created": now,
            "date_updated": now,
            "date_sent": None,
            "price": None,
            "error_code": None,
            "error_message": None,
        }
        message["uri"] = f"/2010-04-01/Accounts/{sid}/Messages/{message['sid']}.json"
        record = dict(
            message,
            # The sim hands the message on at once; listings show it as sent (DateSent filters).
            date_sent=now,
            status_callback=form.get("StatusCallback"),
            media_urls=form.getlist("MediaUrl"),
            received_at=time.time(),
        )
        state.messages.append(record)
        if state.on_message is not None:
            state.on_message(record)
        state.publish(outbound_event(record))
        if state.status_callbacks:
            asyncio.get_running_loop().create_task(_send_status_callbacks(state, record))
        return JSONResponse(message, status_code=201)

    async def read_messages(request: Request) -> Response:
        sid = request.path_params["sid"]
        if not _authorized(request, state) or sid != state.account_sid:
            return _error(401, 20003, "Authenticate")
        query = dict(request.query_params)
        try:
            return JSONResponse(_list_page(state, sid, query))
        except ValueError:
            return _error(400, 20001, "Invalid paging parameter")

    async def list_messages(request: Request) -> Response:
        if request.method == "DELETE":
            state.messages.clear()
            state.attempts.clear()
            state.inbound.clear()
            state.media_fetches.clear()
            return JSONResponse({"ok": True})
        return JSONResponse(
            {
                "messages": state.messages,
                "attempts": state.attempts,
                "inbound": state.inbound,
                "media_fetches": state.media_fetches,
            }
        )

    async def media(request: Request) -> Response:
        authorized = _authorized(request, state)
        state.media_fetches.append({"media_sid": request.path_params["media_sid"], "authorized": authorized})
        if "authorization" in request.headers and not authorized:
            return _error(401, 20003, "Authenticate")
        found = state.media.get(request.path_params["media_sid"])
        if found is None or request.path_params["sid"] != state.account_sid:
            return _error(404, 20404, "The requested resource was not found")
        content_type, data = found
        return Response(data, media_type=content_type)

    async def host_media(request: Request) -> Response:
        content_type = request.headers.get("content-type", "application/octet-stream")
        media_sid = keep_media(state, content_type, await request.body())
        message_sid = "MM" + secrets.token_hex(16)
        return JSONResponse({"url": media_url(state, str(request.base_url), message_sid, media_sid)})

    async def script(request: Request) -> Response:
        payload = await request.json()
        state.scripted = list(payload.get("responses", []))
        state.always = payload.get("always")
        state.delay_s = float(payload.get("delay_s") or 0.0)
        return JSONResponse({"ok": True})

    return Starlette(
        routes=[
            Route("/2010-04-01/Accounts/{sid}/Messages.json", create_message, methods=["POST"]),
            Route("/2010-04-01/Accounts/{sid}/Messages.json", read_messages, methods=["GET"]),
            Route("/_sim/messages", list_messages, methods=["GET", "DELETE"]),
            Route("/_sim/script", script, methods=["POST"]),
            Route("/2010-04-01/Accounts/{sid}/Messages/{message_sid}/Media/{media_sid}", media),
            Route("/_sim/media", host_media, methods=["POST"]),
            *(routes or []),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--account-sid", required=True)
    parser.add_argument("--auth-token", required=True)
    parser.add_argument("--status-callbacks", action="store_true")
    args = parser.parse_args()
    state = SimState(args.account_sid, args.auth_token, status_callbacks=args.status_callbacks)
    uvicorn.run(build_app(state), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
