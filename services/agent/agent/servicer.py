"""The agent's gRPC face: SubmitMessage stores into the durable inbox and returns."""

from __future__ import annotations

import grpc
from redis.exceptions import RedisError
from wacoder.inbox import Inbox
from wacoder.v1 import agent_pb2, agent_pb2_grpc


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox

    async def SubmitMessage(
        self, request: agent_pb2.SubmitMessageRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.SubmitMessageResponse:
        message = request.message
        if not message.message_sid or not message.sender:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "message_sid and sender are required")
        try:
            stored = await self.inbox.enqueue(message)
        except RedisError:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "inbox unavailable")
        return agent_pb2.SubmitMessageResponse(duplicate=stored.duplicate, entry_id=stored.entry_id)
