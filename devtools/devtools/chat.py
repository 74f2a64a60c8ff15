"""`make chat`: talk to the local bot from a terminal, as a whitelisted WhatsApp user.

It plays both sides of Twilio: it signs what you type and posts it to the webhook the way
Twilio does, and it serves the Messages API that `make run` sends replies to, printing
each reply as it arrives.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import sys
from typing import Any
from urllib.parse import urlparse

import httpx
import uvicorn
from twilio.request_validator import RequestValidator

from devtools.devenv import CHAT_TWILIO_URL, DEV_ACCOUNT_SID, DEV_AUTH_TOKEN, chat_phone, configured
from devtools.twilio_sim import SimState, build_app

BOT = "\033[1;32mbot\033[0m"


def show_reply(message: dict[str, Any]) -> None:
    print(f"\r{BOT}: {message['body']}\n\033[1myou\033[0m: ", end="", flush=True)


async def post(client: httpx.AsyncClient, url: str, token: str, form: dict[str, str]) -> None:
    signature = RequestValidator(token).compute_signature(url, form)
    try:
        answer = await client.post(url, data=form, headers={"X-Twilio-Signature": signature})
    except httpx.HTTPError as error:
        print(f"(the webhook at {url} is not answering: {error}. Is `make run` running?)")
        return
    if answer.status_code != 200:
        print(f"(webhook answered {answer.status_code}: {answer.text[:200]})")
    elif match := re.search(r"<Message>(.*)</Message>", answer.text, re.S):
        print(f"{BOT}: {match.group(1)}")


async def chat() -> None:
    env = configured()
    sid = env.get("TWILIO_ACCOUNT_SID", DEV_ACCOUNT_SID)
    token = env.get("TWILIO_AUTH_TOKEN", DEV_AUTH_TOKEN)
    api = urlparse(env.get("TWILIO_API_BASE_URL", CHAT_TWILIO_URL))
    webhook = env.get("PUBLIC_BASE_URL", "http://127.0.0.1:8000").rstrip("/") + "/webhook/whatsapp"
    phone = chat_phone(env)
    bot_number = env.get("TWILIO_WHATSAPP_NUMBER", "whatsapp:+14155238886")

    state = SimState(sid, token, status_callbacks=True, on_message=show_reply)
    server = uvicorn.Server(
        uvicorn.Config(
            build_app(state), host=api.hostname or "127.0.0.1", port=api.port or 80, log_level="warning"
        )
    )
    serving = asyncio.create_task(server.serve())
    print(
        f"Chatting as whatsapp:{phone} with {webhook}. Replies arrive here. /help to start, Ctrl-D to quit."
    )
    loop = asyncio.get_running_loop()
    async with httpx.AsyncClient(timeout=10) as client:
        while True:
            print("\033[1myou\033[0m: ", end="", flush=True)
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            if not line.strip():
                continue
            form = {
                "MessageSid": f"SM{secrets.token_hex(16)}",
                "AccountSid": sid,
                "From": f"whatsapp:{phone}",
                "To": bot_number,
                "Body": line.rstrip("\n"),
                "NumMedia": "0",
                "ProfileName": "chat",
                "WaId": phone.lstrip("+"),
                "SmsStatus": "received",
                "ApiVersion": "2010-04-01",
                "NumSegments": "1",
            }
            await post(client, webhook, token, form)
    server.should_exit = True
    await serving


def main() -> None:
    try:
        asyncio.run(chat())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
