"""The gRPC face of the bridge: McpBridgeService.

Error semantics (what the agent can rely on):
  - INVALID_ARGUMENT: empty caller, empty tool name or session id, arguments_json not a JSON object.
  - UNAVAILABLE: AutoCoder unreachable, connection lost, circuit open ("... retry in N s"),
    a watch whose AutoCoder stayed down too long, or the bridge shutting down.
  - DEADLINE_EXCEEDED: AutoCoder did not answer within MCP_CALL_TIMEOUT_S.
  - NOT_FOUND: WatchSession of a session that does not exist or is not the caller's.
  - A tool's own error is a normal reply with is_error = true and error_message.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from opentelemetry import trace
from wacoder.v1 import bridge_pb2, bridge_pb2_grpc

from mcp_bridge import metrics
from mcp_bridge.breaker import BreakerOpen, CircuitBreaker
from mcp_bridge.cache import ResultCache
from mcp_bridge.mcp_session import McpSession, TransportFailure
from mcp_bridge.tool_calls import CallTimeout, ToolCaller, Unavailable
from mcp_bridge.watch import SessionNotFound, WatchOutage, watch_session

log = logging.getLogger("mcp_bridge.servicer")

# Sent as a watch's initial metadata once AutoCoder answered a poll (see watch.py).
WATCH_LIVE_METADATA = (("wacoder-watch", "live"),)


class McpBridgeServicer(bridge_pb2_grpc.McpBridgeServiceServicer):
    def __init__(
        self,
        session: McpSession,
        breaker: CircuitBreaker,
        tools: ToolCaller,
        cache: ResultCache,
        *,
        watch_poll_interval_s: float,
        watch_max_outage_s: float,
    ) -> None:
        self.session = session
        self.breaker = breaker
        self.tools = tools
        self.cache = cache
        self.watch_poll_interval_s = watch_poll_interval_s
        self.watch_max_outage_s = watch_max_outage_s
        self.stopping = asyncio.Event()

    async def ListTools(
        self, request: bridge_pb2.ListToolsRequest, context: grpc.aio.ServicerContext
    ) -> bridge_pb2.ListToolsResponse:
        if self.session.tools is None:
            # Not connected yet: connect now, through the breaker like any other use of AutoCoder.
            try:
                self.breaker.acquire()
            except BreakerOpen as exc:
                await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
            try:
                await self.session.connect()
            except TransportFailure as exc:
                self.breaker.record_failure()
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"AutoCoder is unreachable: {exc}")
            except BaseException:
                self.breaker.release()
                raise
            self.breaker.record_success()
        return bridge_pb2.ListToolsResponse(
            tools=[
                bridge_pb2.Tool(
                    name=t.name, description=t.description or "", input_schema_json=json.dumps(t.inputSchema)
                )
                for t in self.session.tools or []
            ]
        )

    async def CallTool(
        self, request: bridge_pb2.CallToolRequest, context: grpc.aio.ServicerContext
    ) -> bridge_pb2.CallToolResponse:
        name, caller = request.name.strip(), request.caller.strip()
        if not caller:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "caller is required")
        if not name:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "tool name is required")
        arguments = await _arguments(request.arguments_json, context)

        slot = await self.cache.slot_for(name, arguments, caller)
        if slot is not None:
            hit = await self.cache.get(slot)
            tool = metrics.tool_label(name, self.session.tools)
            metrics.CACHE.labels(tool, "miss" if hit is None else "hit").inc()
            if hit is not None:
                trace.get_current_span().set_attribute("wacoder.cached", True)  # no AutoCoder span
                log.info("tool call", extra={"tool": name, "caller": caller, "outcome": "cached"})
                return bridge_pb2.CallToolResponse(result_json=hit, cached=True)

        started = time.monotonic()
        result: Any = None
        try:
            outcome = await self.tools.call(name, arguments, caller)
            result = outcome.result
        except (BreakerOpen, Unavailable) as exc:
            self._log_call(name, caller, started, "unavailable")
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except CallTimeout as exc:
            self._log_call(name, caller, started, "timeout")
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(exc))
        finally:
            # A write that failed in transit may still have happened: invalidate regardless.
            await self.cache.after_call(name, arguments, caller, result)
        self._log_call(name, caller, started, "tool_error" if outcome.is_error else "ok")
        if slot is not None and not outcome.is_error:
            await self.cache.put(slot, outcome.result)
        return bridge_pb2.CallToolResponse(
            result_json=outcome.result_json, is_error=outcome.is_error, error_message=outcome.error_message
        )

    async def WatchSession(
        self, request: bridge_pb2.WatchSessionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bridge_pb2.SessionEvent]:
        session_id, caller = request.session_id.strip(), request.caller.strip()
        if not caller:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "caller is required")
        if not session_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "session_id is required")
        log.info(
            "watch started",
            extra={"session_id": session_id, "caller": caller, "after_event": request.after_event},
        )

        async def contact() -> None:
            await context.send_initial_metadata(WATCH_LIVE_METADATA)

        try:
            async for event in watch_session(
                self.tools,
                self.cache,
                session_id,
                caller,
                request.after_event,
                poll_interval_s=self.watch_poll_interval_s,
                max_outage_s=self.watch_max_outage_s,
                stopping=self.stopping,
                on_contact=contact,
            ):
                yield event
        except SessionNotFound as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc) or f"session {session_id} not found")
        except WatchOutage as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        log.info("watch ended", extra={"session_id": session_id, "caller": caller})

    async def stop(self) -> None:
        """Ends the watches (with UNAVAILABLE and where to resume) so shutdown does not wait on them."""
        self.stopping.set()

    def _log_call(self, name: str, caller: str, started: float, outcome: str) -> None:
        metrics.TOOL_SECONDS.labels(metrics.tool_label(name, self.session.tools), outcome).observe(
            time.monotonic() - started
        )
        log.info(
            "tool call",
            extra={
                "tool": name,
                "caller": caller,
                "outcome": outcome,
                "latency_ms": round((time.monotonic() - started) * 1000),
                "breaker": self.breaker.state.value,
            },
        )


async def _arguments(arguments_json: str, context: grpc.aio.ServicerContext) -> dict[str, Any]:
    if not arguments_json.strip():
        return {}
    try:
        arguments = json.loads(arguments_json)
    except ValueError:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "arguments_json is not valid JSON")
    if not isinstance(arguments, dict):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "arguments_json must be a JSON object")
    return arguments
