"""Entry point: `python -m autocoder.main` serves the reference AutoCoder MCP server.

Wires the shared settings (host, port, API key, LLM) and AutoCoder's own (data dir, URL
signing, sandbox limits) into the store, the pipeline, the tools and one uvicorn server.
uvicorn handles SIGTERM/SIGINT: it stops accepting, gives open streams `shutdown_grace_s`,
then the lifespan cancels running sessions (recorded as failed) and the journal is synced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator
from typing import Any

import uvicorn
import uvloop
from mcp.server.fastmcp import FastMCP
from mcp.server.transport_security import TransportSecuritySettings
from wacoder.logs import setup_logging
from wacoder.ops_http import start_ops_server
from wacoder.settings import Settings, service_settings
from wacoder.tracing import setup_tracing

from autocoder.agents.llm import LLMGenerator
from autocoder.agents.selection import PIPELINE_ORDER
from autocoder.config import VERSION, AutoCoderConfig
from autocoder.http_app import build_app
from autocoder.pipeline import Pipeline
from autocoder.sharing import register_sharing_tools
from autocoder.signing import UrlSigner
from autocoder.storage import Store, load_or_create_key
from autocoder.tools import caller_of, register_tools

log = logging.getLogger("autocoder")


def build(settings: Settings, config: AutoCoderConfig) -> tuple[Any, Store]:
    data_dir = config.data_dir.resolve()
    store = Store(
        data_dir,
        journal_max_records=config.journal_max_records,
        idempotency_ttl_s=config.idempotency_ttl_s,
        idempotency_max_keys=config.idempotency_max_keys,
    )
    key = (
        config.signing_key.get_secret_value().encode() if config.signing_key else load_or_create_key(data_dir)
    )
    base_url = config.public_url or f"http://{settings.autocoder_host}:{settings.autocoder_port}"
    signer = UrlSigner(key, base_url, config.url_ttl_s)

    llm = None
    if settings.openai_api_key is not None and config.llm == "auto":
        llm = LLMGenerator(
            settings.openai_api_key.get_secret_value(),
            settings.openai_base_url,
            settings.llm_model,
            settings.llm_timeout_s,
        )
    llm_kind = "openai" if llm else "builtin"
    pipeline = Pipeline(store, config, llm)

    # DNS-rebinding protection only makes sense on loopback; behind a Service/ingress the Host
    # header is whatever the cluster calls us, and the bearer token is the guard.
    loopback = settings.autocoder_host in ("127.0.0.1", "localhost", "::1")
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=loopback,
        allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
        allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
    )
    mcp = FastMCP(
        "autocoder",
        streamable_http_path="/mcp",
        transport_security=security,
        host=settings.autocoder_host,
        port=settings.autocoder_port,
    )
    register_tools(mcp, store, pipeline, signer, llm_kind)
    register_sharing_tools(mcp, store, caller_of)

    def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "service": "autocoder",
            "version": VERSION,
            "agents": list(PIPELINE_ORDER),
            "llm": llm_kind,
            "active_sessions": store.active_sessions(),
        }

    async def on_shutdown() -> None:
        await pipeline.shutdown()
        await store.close()
        log.info("autocoder stopped")

    # Required in production (require_secrets); in development an unset key leaves /mcp open.
    api_key = settings.autocoder_api_key.get_secret_value() if settings.autocoder_api_key else None
    app = build_app(mcp, store, signer, health, api_key, on_shutdown)
    return app, store


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown, so the process would end
    "killed by signal". We handle them on the loop instead: same graceful shutdown (a second
    signal forces it), exit status 0, which is what supervisors and `kubectl` expect."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        try:
            yield
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)


def main() -> None:
    settings = service_settings("autocoder")
    config = AutoCoderConfig()
    setup_logging(settings, "autocoder")
    setup_tracing("autocoder")  # before the app is built: it traces only if this is on
    app, _ = build(settings, config)
    log.info(
        "autocoder starting",
        extra={
            "host": settings.autocoder_host,
            "port": settings.autocoder_port,
            "auth": settings.autocoder_api_key is not None,
            "data_dir": str(config.data_dir),
        },
    )
    server = _Server(
        uvicorn.Config(
            app,
            host=settings.autocoder_host,
            port=settings.autocoder_port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=int(config.shutdown_grace_s) or 1,
        )
    )
    uvloop.run(serve(server, settings))  # uvloop: the event loop's own work is most of a message's CPU


async def serve(server: uvicorn.Server, settings: Settings) -> None:
    async def ready() -> bool:
        # build() loaded the store before this; `started` says the MCP endpoint listens.
        return bool(server.started and not server.should_exit)

    ops = await start_ops_server(settings.metrics_host, settings.autocoder_metrics_port, ready)
    try:
        await server.serve()
    finally:
        await ops.stop()


if __name__ == "__main__":
    main()
