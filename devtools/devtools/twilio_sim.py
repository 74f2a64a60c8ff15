"""A local stand-in for Twilio's Messages REST API, speaking its wire protocol.

`make chat` serves it so that replies land in your terminal; the tests run it as a process
and read back what the notifier sent. It can be told to fail (429 with Retry-After, 5xx,
error codes such as 63016) to exercise retries, and it can send signed status callbacks
the way Twilio does.

    POST /2010-04-01/Accounts/{sid}/Messages.json   Twilio's endpoint (basic auth SID:token)
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
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from twilio.request_validator import RequestValidator

log = logging.getLogger("devtools.twilio_sim")


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
        for required in ("To", "From", "Body"):
            if not form.get(required) and not (required == "Body" and form.get("MediaUrl")):
                return _error(400, 21604 if required == "To" else 21602, f"A '{required}' is required.")
        body = str(form.get("Body", ""))
        if len(body) > 1600:
            return _error(400, 21617, "The concatenated message body exceeds the 1600 character limit.")
        now = format_datetime(datetime.now(UTC))
        message = {
            "sid": "SM" + secrets.token_hex(16),
            "account_sid": sid,
            "from": form.get("From"),
            "to": form.get("To"),
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
            "uri": f"/2010-04-01/Accounts/{sid}/Messages/x.json",
        }
        record = dict(
            message,
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
