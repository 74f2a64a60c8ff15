"""mcp-bridge: `python -m mcp_bridge.main` serves McpBridgeService on MCP_BRIDGE_ADDR.

It starts and reports SERVING even while AutoCoder is down: the MCP session is made on the
first call and remade whenever it drops.
"""

from __future__ import annotations

import logging

import httpx
import uvloop
from wacoder.crypto import StateCipher
from wacoder.grpc import serve
from wacoder.logs import setup_logging
from wacoder.ops_http import start_ops_server
from wacoder.redis import open_redis
from wacoder.settings import require_secrets
from wacoder.tracing import setup_tracing
from wacoder.v1 import bridge_pb2, bridge_pb2_grpc

from mcp_bridge import metrics
from mcp_bridge.breaker import CircuitBreaker
from mcp_bridge.cache import ResultCache
from mcp_bridge.mcp_session import McpSession, TransportFailure
from mcp_bridge.servicer import McpBridgeServicer
from mcp_bridge.settings import BridgeSettings
from mcp_bridge.tool_calls import ToolCaller

log = logging.getLogger("mcp_bridge.main")
SERVICE_NAME = bridge_pb2.DESCRIPTOR.services_by_name["McpBridgeService"].full_name


async def run(settings: BridgeSettings) -> None:
    redis = await open_redis(settings)
    # Required in production (require_secrets); a development AutoCoder may run without one.
    api_key = settings.autocoder_api_key.get_secret_value() if settings.autocoder_api_key else None
    session = McpSession(
        settings.autocoder_mcp_url,
        api_key=api_key,
        connect_timeout_s=min(settings.mcp_connect_timeout_s, settings.mcp_call_timeout_s),
        call_timeout_s=settings.mcp_call_timeout_s,
    )
    breaker = CircuitBreaker(settings.breaker_failure_threshold, settings.breaker_reset_timeout_s)
    metrics.BREAKER_STATE.set_function(lambda: metrics.BREAKER_VALUES[breaker.state.value])
    tools = ToolCaller(
        session,
        breaker,
        timeout_s=settings.mcp_call_timeout_s,
        retries=settings.mcp_retries,
        backoff_base_s=settings.mcp_backoff_base_s,
        retry_budget_s=settings.mcp_retry_budget_s,
    )
    servicer = McpBridgeServicer(
        session,
        breaker,
        tools,
        ResultCache(redis, StateCipher.from_settings(settings)),
        watch_poll_interval_s=settings.watch_poll_interval_s,
        watch_max_outage_s=settings.watch_max_outage_s,
    )
    log.info("mcp-bridge starting", extra={"autocoder_url": settings.autocoder_mcp_url})

    # Readiness: AutoCoder answers now, and the MCP session is up (a probe makes it, so the
    # bridge says it is back without waiting for a user's call). An idle session does not notice
    # AutoCoder going away, hence the HTTP request: any answer below 500 means it is there, and
    # naming a session that does not exist gets an immediate 404 that opens nothing on it.
    probe = httpx.AsyncClient(headers={**session.headers, "mcp-session-id": "readiness-probe"}, timeout=2.0)

    async def autocoder_reachable() -> bool:
        try:
            answered = await probe.get(settings.autocoder_mcp_url)
            await session.connect()
        except (httpx.HTTPError, TransportFailure):
            return False
        return answered.status_code < 500

    ops = await start_ops_server(settings.metrics_host, settings.mcp_bridge_metrics_port, autocoder_reachable)
    try:
        # serve() returns once in-flight calls have drained after SIGTERM; watches are told to
        # end first (on_stop), then the MCP session and Redis close.
        await serve(
            settings.mcp_bridge_addr,
            [(bridge_pb2_grpc.add_McpBridgeServiceServicer_to_server, servicer)],  # type: ignore[list-item]
            [SERVICE_NAME],
            settings,
            on_stop=servicer.stop,
        )
    finally:
        await ops.stop()
        await probe.aclose()
        await session.close()
        await redis.aclose()
        log.info("mcp-bridge stopped")


def main() -> None:
    settings = BridgeSettings()
    require_secrets(settings, "mcp-bridge")
    setup_logging(settings, "mcp-bridge")
    setup_tracing("mcp-bridge")  # before the server: it traces only if this is on
    uvloop.run(run(settings))  # uvloop: the event loop's own work is most of a message's CPU


if __name__ == "__main__":
    main()
