"""Hands an accepted message to the agent. If the agent cannot take it right now, the
webhook stores it in the agent's inbox itself (the same idempotent write the agent does),
so a 200 to Twilio never drops a message."""

from __future__ import annotations

import logging

import grpc
from wacoder.inbox import Enqueued, Inbox
from wacoder.v1 import agent_pb2, agent_pb2_grpc

log = logging.getLogger("webhook.handoff")


class Handoff:
    def __init__(self, agent: agent_pb2_grpc.AgentServiceStub, inbox: Inbox, timeout_s: float) -> None:
        self.agent = agent
        self.inbox = inbox
        self.timeout_s = timeout_s

    async def submit(self, message: agent_pb2.InboundMessage) -> Enqueued:
        try:
            reply = await self.agent.SubmitMessage(
                agent_pb2.SubmitMessageRequest(message=message), timeout=self.timeout_s
            )
            return Enqueued(duplicate=reply.duplicate, entry_id=reply.entry_id)
        except grpc.aio.AioRpcError as error:
            log.warning(
                "agent unavailable, storing in its inbox directly", extra={"grpc_code": error.code().name}
            )
        return await self.inbox.enqueue(message)
