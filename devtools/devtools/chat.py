"""`make chat`: talk to the local bot from a terminal, as a whitelisted WhatsApp user.

It is a terminal for the WhatsApp simulator (devtools.simulator), which plays both sides of
Twilio: what you type is signed and posted to the webhook the way Twilio posts it, and the
replies the notifier sends to the simulator's Messages API are printed as they arrive. `make run`
runs the simulator; without one answering, `make chat` serves it itself (the same code).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from contextlib import suppress

import httpx

from devtools.devenv import chat_phone, configured
from devtools.simulator import page_url, server, simulator_state

BOT = "\033[1;32mbot\033[0m"
YOU = "\033[1myou\033[0m"


def show(text: str) -> None:
    print(f"\r{BOT}: {text}\n{YOU}: ", end="", flush=True)


async def listen(client: httpx.AsyncClient, url: str, phone: str) -> None:
    """Prints the bot's messages to `phone` as the simulator's event stream tells them."""
    async with client.stream("GET", f"{url}/_sim/events", timeout=None) as events:
        async for line in events.aiter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            if event["type"] == "outbound" and event["message"]["to"] == f"whatsapp:{phone}":
                show(event["message"]["body"])


async def answers(client: httpx.AsyncClient, url: str) -> bool:
    try:
        return (await client.get(f"{url}/_sim/config", timeout=2)).status_code == 200
    except httpx.HTTPError:
        return False


async def chat() -> None:
    env = configured()
    phone = chat_phone(env)
    url = page_url(env)
    serving: asyncio.Task[None] | None = None
    async with httpx.AsyncClient(timeout=20) as client:
        if not await answers(client, url):
            # Its own warnings (webhook unreachable) are said here, in the chat's words.
            logging.getLogger("devtools.twilio_sim").setLevel(logging.ERROR)
            state = simulator_state(env)
            try:
                own, sockets = server(state, env)
            except OSError as error:
                print(f"(no simulator at {url}, and none can start here: {error})")
                return
            # The sockets listen already: a request made before it serves waits in their backlog.
            serving = asyncio.create_task(own.serve(sockets=sockets))
        listening = asyncio.create_task(listen(client, url, phone))
        print(f"Chatting as whatsapp:{phone}; the page is {url}. /help to start, Ctrl-D to quit.")
        loop = asyncio.get_running_loop()
        try:
            while True:
                print(f"{YOU}: ", end="", flush=True)
                line = await loop.run_in_executor(None, sys.stdin.readline)
                if not line:
                    break
                if line.strip():
                    await say(client, url, phone, line.rstrip("\n"))
        finally:
            listening.cancel()
            with suppress(asyncio.CancelledError, httpx.HTTPError):
                await listening
            if serving is not None:
                own.should_exit = True
                await serving


async def say(client: httpx.AsyncClient, url: str, phone: str, text: str) -> None:
    try:
        answer = await client.post(f"{url}/_sim/send", data={"phone": phone, "body": text})
    except httpx.HTTPError as error:
        print(f"(the simulator at {url} is not answering: {error})")
        return
    if answer.status_code != 200:
        print(f"(not sent: {answer.text[:200]})")
        return
    sent = answer.json()
    if sent["status"] == "failed":
        print(f"(the webhook answered {sent['answer'] or 'nothing'}: is `make run` running?)")
    elif sent["reply"]:
        print(f"{BOT}: {sent['reply']}")


def main() -> None:
    with suppress(KeyboardInterrupt):
        asyncio.run(chat())


if __name__ == "__main__":
    main()
