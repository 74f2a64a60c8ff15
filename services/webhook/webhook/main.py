"""The webhook service: Twilio's front door. Wires settings, Redis, the gRPC channels and
the routes, and serves them with uvicorn."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI
from wacoder import grpc as wgrpc
from wacoder.botconfig import BotConfigSource
from wacoder.crypto import StateCipher
from wacoder.inbox import Inbox
from wacoder.logs import setup_logging
from wacoder.redis import Replication, open_redis
from wacoder.settings import Settings, service_settings
from wacoder.tracing import setup_tracing
from wacoder.v1 import agent_pb2_grpc

from webhook.admission import Gate
from webhook.handoff import Handoff
from webhook.routes import Deps, router
from webhook.signature import SignatureChecker


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = await open_redis(settings)
        replication = Replication.from_settings(redis, settings)
        bot_config = BotConfigSource(settings)
        watching = asyncio.create_task(bot_config.watch())
        channels = {
            "agent": wgrpc.channel(settings.agent_addr, settings),
            "mcp-bridge": wgrpc.channel(settings.mcp_bridge_addr, settings),
            "notifier": wgrpc.channel(settings.notifier_addr, settings),
        }
        cipher = StateCipher.from_settings(settings)
        app.state.deps = Deps(
            settings=settings,
            redis=redis,
            cipher=cipher,
            hash_salt=settings.secret("phone_hash_salt"),
            signatures=SignatureChecker(settings.public_base_url, settings.secret("twilio_auth_token")),
            gate=Gate(redis, bot_config, settings.secret("phone_hash_salt")),
            handoff=Handoff(
                agent_pb2_grpc.AgentServiceStub(channels["agent"]),
                Inbox(
                    redis,
                    cipher,
                    settings.secret("phone_hash_salt"),
                    replication,
                ),
                settings.grpc_fast_timeout_s,
            ),
            channels=channels,
        )
        yield
        watching.cancel()
        for channel in channels.values():
            await channel.close()
        await replication.aclose()
        await redis.aclose()

    app = FastAPI(
        title="WhatsApp-Coder webhook",
        description="Twilio WhatsApp webhooks in; everything else happens behind gRPC.",
        version="0.1.0",
        lifespan=lifespan,
        # FastAPI's own OpenTelemetry spans are off: the routes make theirs (webhook.routes), so
        # that a trace starts at our span (never at a `traceparent` anyone on the Internet
        # sends), only Twilio's requests are traced (not every probe), and nothing a request
        # brings becomes an attribute unchecked (ADR 0010).
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    app.include_router(router)
    return app


def main() -> None:
    settings = service_settings("webhook")
    setup_logging(settings, "webhook")
    setup_tracing("webhook")  # before the channels are made: they trace only if it is on
    uvicorn.run(
        create_app(settings),
        host=settings.webhook_host,
        port=settings.webhook_port,
        log_config=None,
        access_log=False,
        # X-Forwarded-For/-Proto only from the proxies we were told about (none by default);
        # signatures never depend on them: they are checked over PUBLIC_BASE_URL.
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=settings.trusted_proxies or "",
    )


if __name__ == "__main__":
    main()
