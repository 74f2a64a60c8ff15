"""The bench's reference: what a simple single-process WhatsApp bot does for one message.

A minimal inline FastAPI Twilio webhook in the manner of the public project
eladrave/WhatsappCoder (the reference of issue 14), written here from scratch: one uvicorn
worker; `POST /webhook/whatsapp` verifies the Twilio signature over PUBLIC_BASE_URL + path
(403), checks the whitelist, counts a per-phone rate limit in Redis (INCR + EXPIRE, one round
trip), and answers `/help` inline with TwiML — no queue, no second process, no REST call.
Anything else gets a one-line TwiML answer.

Configuration, as the platform's: TWILIO_AUTH_TOKEN, PUBLIC_BASE_URL, ALLOWED_PHONE_NUMBERS
(`*`: everybody), RATE_LIMIT_PER_PHONE (per minute), REDIS_URL; WEBHOOK_PORT.

    python -m bench.reference_webhook
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from xml.sax.saxutils import escape

import redis.asyncio as aioredis
import uvicorn
from fastapi import FastAPI, Request, Response
from twilio.request_validator import RequestValidator

# The same help text the platform's agent sends, so both answer with the same bytes.
try:
    from agent.catalog import HELP
except ImportError:  # pragma: no cover - the bench runs in the workspace's venv
    HELP = "Commands: /help, /new <name>, /list, /use <name>, /run <task>, /status, /files, /agents"

PATH = "/webhook/whatsapp"
TWIML = "application/xml"


def create_app() -> FastAPI:
    token = os.environ["TWILIO_AUTH_TOKEN"]
    url = os.environ.get("PUBLIC_BASE_URL", "http://127.0.0.1:8000").rstrip("/") + PATH
    allowed_raw = os.environ.get("ALLOWED_PHONE_NUMBERS", "")
    allowed = {n.strip() for n in allowed_raw.split(",") if n.strip()}
    per_minute = int(os.environ.get("RATE_LIMIT_PER_PHONE", "10"))
    validator = RequestValidator(token)
    state: dict[str, aioredis.Redis] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state["redis"] = aioredis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
        yield
        await state["redis"].aclose()

    app = FastAPI(lifespan=lifespan)

    def twiml(text: str | None) -> Response:
        body = f"<Response><Message>{escape(text)}</Message></Response>" if text else "<Response/>"
        return Response('<?xml version="1.0" encoding="UTF-8"?>' + body, media_type=TWIML)

    @app.post(PATH)
    async def whatsapp(request: Request) -> Response:
        form = await request.form()
        params = {k: str(v) for k, v in form.items()}
        if not validator.validate(url, params, request.headers.get("X-Twilio-Signature", "")):
            return Response("invalid signature", status_code=403)
        phone = params.get("From", "").removeprefix("whatsapp:")
        if "*" not in allowed and phone not in allowed:
            return twiml("Sorry, you are not authorized to use this service.")
        pipe = state["redis"].pipeline(transaction=False)
        key = f"rate_limit:{phone}"
        pipe.incr(key)
        pipe.expire(key, 60, nx=True)
        count, _ = await pipe.execute()
        if int(count) > per_minute:
            return twiml("You are sending messages too fast. Please wait a minute.")
        body = params.get("Body", "").strip()
        if body.lower() == "/help":
            return twiml(HELP)
        return twiml("Send /help to see what I can do.")

    return app


def main() -> None:
    uvicorn.run(
        create_app(),
        host="127.0.0.1",
        port=int(os.environ.get("WEBHOOK_PORT", "8000")),
        workers=1,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
