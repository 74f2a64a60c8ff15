"""AutoCoder as the agent sees it: tool calls through mcp-bridge on behalf of one caller.

The caller is the user's phone hash; AutoCoder scopes every project and session by it, so
one user can never reach another's work, whatever ids they type.
"""

from __future__ import annotations

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
        """Positional-only so that a tool argument may be called `name` or `tool`."""
        request = bridge_pb2.CallToolRequest(name=tool, arguments_json=json.dumps(arguments), caller=caller)
        try:
            reply = await self.stub.CallTool(request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as error:
            if error.code() in _UNAVAILABLE:
                raise AutoCoderUnavailable(error.details()) from error
            raise ToolError(error.details() or error.code().name) from error
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
