"""AutoCoder as the agent sees it: tool calls through mcp-bridge on behalf of one caller.

The caller is the user's phone hash; AutoCoder scopes every project and session by it, so
one user can never reach another's work, whatever ids they type.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from wacoder.v1 import bridge_pb2, bridge_pb2_grpc

# gRPC codes that mean "AutoCoder (or the bridge) cannot answer right now".
_UNAVAILABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


# Tools that read, cancel_session (a repeat finds the session ended), and creating tools called
# with an idempotency key (ADR 0002), may be asked again after a transient failure without doing
# anything twice.
_READ_TOOLS = frozenset(
    {"list_projects", "get_session_details", "get_session_files", "check_system_health", "cancel_session"}
)
# A dependency that blinks (a bridge replica restarting, a connection dropped) is asked once
# more before the user hears "temporarily unavailable"; the bridge has already retried AutoCoder
# itself, so a real outage still answers within seconds.
RETRY_DELAYS_S = (1.0,)


class AutoCoderUnavailable(Exception):
    """AutoCoder, the bridge, or the way to them is down: the user gets the connection template."""


class ToolError(Exception):
    """AutoCoder answered with an error meant for the user (not found, bad arguments)."""


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    input_schema: dict[str, Any]


class AutoCoder:
    def __init__(self, stub: bridge_pb2_grpc.McpBridgeServiceStub, timeout_s: float) -> None:
        self.stub = stub
        self.timeout_s = timeout_s

    async def tools(self) -> list[ToolSpec]:
        try:
            reply = await self.stub.ListTools(bridge_pb2.ListToolsRequest(), timeout=self.timeout_s)
        except grpc.aio.AioRpcError as error:
            raise AutoCoderUnavailable(error.details()) from error
        return [ToolSpec(t.name, t.description, json.loads(t.input_schema_json or "{}")) for t in reply.tools]

    async def call(self, caller: str, tool: str, /, **arguments: Any) -> Any:
        """Positional-only so that a tool argument may be called `name` or `tool`.

        A call that is safe to repeat is retried through short outages (UNAVAILABLE); a
        deadline that passed is not (the caller's patience is spent, the tool may still run)."""
        request = bridge_pb2.CallToolRequest(name=tool, arguments_json=json.dumps(arguments), caller=caller)
        repeatable = tool in _READ_TOOLS or bool(arguments.get("idempotency_key"))
        delays = iter(RETRY_DELAYS_S if repeatable else ())
        while True:
            try:
                reply = await self.stub.CallTool(request, timeout=self.timeout_s)
                break
            except grpc.aio.AioRpcError as error:
                if error.code() not in _UNAVAILABLE:
                    raise ToolError(error.details() or error.code().name) from error
                delay = next(delays, None) if error.code() is grpc.StatusCode.UNAVAILABLE else None
                if delay is None:
                    raise AutoCoderUnavailable(error.details()) from error
                await asyncio.sleep(delay)
        if reply.is_error:
            raise ToolError(reply.error_message)
        return json.loads(reply.result_json) if reply.result_json else None

    async def watch(
        self, caller: str, session_id: str, after_event: int, on_contact: Callable[[], None] | None = None
    ) -> AsyncIterator[bridge_pb2.SessionEvent]:
        """The session's events; `on_contact` is called once the bridge has reached AutoCoder for
        this watch (its initial metadata says so), which may be long before the next event."""
        request = bridge_pb2.WatchSessionRequest(
            session_id=session_id, caller=caller, after_event=after_event
        )
        try:
            call = self.stub.WatchSession(request)
            metadata = await call.initial_metadata()
            if on_contact is not None and ("wacoder-watch", "live") in tuple(metadata or ()):
                on_contact()
            async for event in call:
                yield event
        except grpc.aio.AioRpcError as error:
            if error.code() in _UNAVAILABLE:
                raise AutoCoderUnavailable(error.details()) from error
            raise ToolError(error.details() or error.code().name) from error
