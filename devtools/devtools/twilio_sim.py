"""A local stand-in for Twilio's Messages REST API, speaking its wire protocol.

`make chat` serves it so that replies land in your terminal; the tests run it as a process
and read back what the notifier sent. It can be told to fail (429 with Retry-After, 5xx,
error codes such as 63016) to exercise retries, and it can send signed status callbacks
the way Twilio does.

    POST /2010-04-01/Accounts/{sid}/Messages.json   Twilio's endpoint (basic auth SID:token)
    GET  /2010-04-01/Accounts/{sid}/Messages.json   Twilio's list: newest first, paged (PageSize,
                                                     Page, PageToken; next_page_uri), filtered by
                                                     To, From, DateSent / DateSent< / DateSent>
                                                     on the UTC date only, as Twilio does
    GET  /_sim/messages                              every message accepted so far
    DELETE /_sim/messages                            forget them
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
import secrets
import time
from collections.abc import Callable
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
from starlette.routing import Route
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


async def _send_status_callbacks(state: SimState, url: str, message: dict[str, Any]) -> None:
    """Twilio posts queued -> sent -> delivered to StatusCallback, signed with the auth token."""
    validator = RequestValidator(state.auth_token)
    async with httpx.AsyncClient(timeout=5) as client:
        for status in ("sent", "delivered"):
            await asyncio.sleep(0.05)
            params = {
                "MessageSid": message["sid"],
                "MessageStatus": status,
                "AccountSid": state.account_sid,
                "From": message["from"],
                "To": message["to"],
            }
            signature = validator.compute_signature(url, params)
            try:
                await client.post(url, data=params, headers={"X-Twilio-Signature": signature})
            except httpx.HTTPError:
                log.warning("status callback failed")


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


def build_app(state: SimState) -> Starlette:
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
        callback = form.get("StatusCallback")
        if state.status_callbacks and callback:
            asyncio.get_running_loop().create_task(_send_status_callbacks(state, str(callback), message))
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
            return JSONResponse({"ok": True})
        return JSONResponse({"messages": state.messages, "attempts": state.attempts})

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
