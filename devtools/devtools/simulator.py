"""The WhatsApp simulator: `make run` serves it at http://127.0.0.1:8080 (SIMULATOR_PORT).

A page that looks and behaves like WhatsApp (devtools/web/), in front of the Twilio stand-in
of devtools.twilio_sim: what you type there is posted to the webhook as Twilio posts a user's
message, the bot's replies arrive through the Messages API the notifier calls, and the page
hears about both at once over server-sent events. The same process serves that Messages API on
TWILIO_API_BASE_URL's port (8099 in `make run`), so one state holds both sides.

    GET  /                      the page (static files from devtools/web/)
    GET  /_sim/config           the bot's number and the numbers offered (the whitelist)
    GET  /_sim/events           server-sent events: `inbound`, `outbound`, `status` (JSON)
    GET  /_sim/chat?phone=...   one user's conversation so far, as events
    POST /_sim/send             form: phone, body, file (optional): a user writes to the bot
    POST /_sim/read             form: phone: the user has seen the chat (`read` callbacks)
    GET  /livez, /readyz        for `make run`'s supervisor
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from urllib.parse import urlparse

import httpx
import uvicorn
import yaml
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from devtools.devenv import CHAT_TWILIO_URL, DEV_ACCOUNT_SID, DEV_AUTH_TOKEN, DEV_PHONE, configured
from devtools.twilio_sim import MEDIA_MAX_BYTES, SimState, build_app, mark_read, send_inbound

log = logging.getLogger("devtools.simulator")

WEB = Path(__file__).parent / "web"
SIMULATOR_PORT = 8080
E164 = re.compile(r"^\+[1-9]\d{6,14}$")
# A comment line now and then keeps idle event streams open through proxies and tells a
# closed page from a quiet one.
KEEPALIVE_S = 15.0


def offered_phones(env: Mapping[str, str]) -> list[str]:
    """The whitelisted numbers, for the page to offer: BOT_CONFIG_FILE's (read now, as the
    services re-read it), else ALLOWED_PHONE_NUMBERS; `*` offers none (type any)."""
    numbers: list[str] = []
    if path := env.get("BOT_CONFIG_FILE"):
        try:
            config = yaml.safe_load(Path(path).read_text()) or {}
            numbers = [str(n) for n in config.get("allowedPhoneNumbers") or []]
        except (OSError, yaml.YAMLError, AttributeError):
            numbers = []
    if not numbers:
        numbers = env.get("ALLOWED_PHONE_NUMBERS", DEV_PHONE).split(",")
    return [n.strip() for n in numbers if E164.match(n.strip())]


def page_routes(
    state: SimState, phones: Callable[[], list[str]], media_base_url: str | None = None
) -> list[BaseRoute]:
    """The page and what it calls, over the Twilio stand-in's `state`; attachments are hosted at
    `media_base_url` (Twilio's API, as this process serves it), else at the page's own URL."""

    async def index(request: Request) -> Response:
        return FileResponse(WEB / "index.html", headers={"Cache-Control": "no-cache"})

    async def config(request: Request) -> Response:
        return JSONResponse({"bot_number": state.bot_number, "phones": phones()})

    async def events(request: Request) -> Response:
        queue = state.subscribe()

        async def stream() -> AsyncIterator[str]:
            try:
                yield "retry: 1000\n\n"
                while True:
                    try:
                        async with asyncio.timeout(KEEPALIVE_S):
                            event = await queue.get()
                    except TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    if event is None:
                        return
                    yield f"data: {json.dumps(event)}\n\n"
            finally:
                state.unsubscribe(queue)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def chat(request: Request) -> Response:
        phone = request.query_params.get("phone", "")
        if not E164.match(phone):
            return PlainTextResponse("phone: an E.164 number, e.g. +15550001234", status_code=400)
        return JSONResponse({"events": state.timeline(phone)})

    async def send(request: Request) -> Response:
        async with request.form(max_part_size=MEDIA_MAX_BYTES) as form:
            phone = str(form.get("phone", "")).strip()
            body = str(form.get("body", ""))
            upload = form.get("file")
            media: list[tuple[str, bytes]] = []
            if isinstance(upload, UploadFile) and upload.filename:
                data = await upload.read()
                media.append((upload.content_type or "application/octet-stream", data))
        if not E164.match(phone):
            return PlainTextResponse("phone: an E.164 number, e.g. +15550001234", status_code=400)
        if not body.strip() and not media:
            return PlainTextResponse("nothing to send", status_code=400)
        # Attachments are hosted where Twilio's API is (TWILIO_API_BASE_URL), as Twilio hosts them:
        # the agent sends the account's credentials to that host only.
        base_url = media_base_url or str(request.base_url)
        async with httpx.AsyncClient(timeout=20) as client:
            record = await send_inbound(state, client, phone, body, media, base_url=base_url)
        return JSONResponse({k: v for k, v in record.items() if k != "form"})

    async def read(request: Request) -> Response:
        form = await request.form()
        phone = str(form.get("phone", ""))
        if not E164.match(phone):
            return PlainTextResponse("phone: an E.164 number, e.g. +15550001234", status_code=400)
        return JSONResponse({"read": await mark_read(state, phone)})

    async def alive(request: Request) -> Response:
        return PlainTextResponse("ok")

    return [
        Route("/", index),
        Route("/_sim/config", config),
        Route("/_sim/events", events),
        Route("/_sim/chat", chat),
        Route("/_sim/send", send, methods=["POST"]),
        Route("/_sim/read", read, methods=["POST"]),
        Route("/livez", alive),
        Route("/readyz", alive),
        Mount("/static", StaticFiles(directory=WEB), name="static"),
    ]


def simulator_state(env: Mapping[str, str]) -> SimState:
    """Twilio as `env` configures the services: the same account, token, number and webhook."""
    return SimState(
        env.get("TWILIO_ACCOUNT_SID", DEV_ACCOUNT_SID),
        env.get("TWILIO_AUTH_TOKEN", DEV_AUTH_TOKEN),
        status_callbacks=True,
        webhook_url=env.get("PUBLIC_BASE_URL", "http://127.0.0.1:8000").rstrip("/") + "/webhook/whatsapp",
        bot_number=env.get("TWILIO_WHATSAPP_NUMBER", "whatsapp:+14155238886"),
    )


def simulator_app(state: SimState, env: Mapping[str, str]) -> Starlette:
    media_base_url = env.get("TWILIO_API_BASE_URL", CHAT_TWILIO_URL) if api_port(env) is not None else None
    return build_app(state, page_routes(state, lambda: offered_phones(env), media_base_url))


def page_url(env: Mapping[str, str]) -> str:
    return f"http://127.0.0.1:{env.get('SIMULATOR_PORT', SIMULATOR_PORT)}"


def api_port(env: Mapping[str, str]) -> int | None:
    """The port of TWILIO_API_BASE_URL when it is this machine (the services send there)."""
    api = urlparse(env.get("TWILIO_API_BASE_URL", CHAT_TWILIO_URL))
    if api.hostname not in ("127.0.0.1", "localhost") or api.scheme != "http":
        return None
    return api.port or 80


def listening_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    return sock


def server(state: SimState, env: Mapping[str, str]) -> tuple[uvicorn.Server, list[socket.socket]]:
    """The simulator's server and its sockets: the page's port, and the Messages API's."""
    ports = [int(env.get("SIMULATOR_PORT", SIMULATOR_PORT))]
    if (api := api_port(env)) is not None and api not in ports:
        ports.append(api)
    sockets = [listening_socket(port) for port in ports]
    # Open event streams would hold a graceful shutdown forever: give them a second.
    config = uvicorn.Config(
        simulator_app(state, env), log_level="warning", timeout_graceful_shutdown=1, lifespan="off"
    )
    return uvicorn.Server(config), sockets


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    env = configured()
    state = simulator_state(env)
    srv, sockets = server(state, env)
    ports = ", ".join(str(s.getsockname()[1]) for s in sockets)
    log.info("WhatsApp simulator on 127.0.0.1 port(s) %s, posting to %s", ports, state.webhook_url)
    srv.run(sockets=sockets)


if __name__ == "__main__":
    main()
