"""Replies leave through the notifier. Each carries an idempotency key derived from what
caused it, so sending the same reply again (after a crash) delivers it once."""

from __future__ import annotations

import asyncio
import logging
import time

import grpc
from wacoder.v1 import notifier_pb2, notifier_pb2_grpc

log = logging.getLogger("agent.outbound")

REFUSED_RETRY_S = 0.25


class Outbound:
    def __init__(self, stub: notifier_pb2_grpc.NotifierServiceStub, timeout_s: float) -> None:
        self.stub = stub
        self.timeout_s = timeout_s

    async def send(
        self, to: str, text: str, key: str, *, accepted_at_ms: int = 0, refused_patience_s: float = 0.0
    ) -> None:
        """One message, however long: the notifier splits it into numbered parts of at most
        1,600 characters in one atomic write, so no other message to the same user can land
        between its parts. Raises grpc errors: the caller retries its work. A recipient the
        notifier may not write to (not whitelisted, silent for 24 h) is final: logged, not raised.

        `accepted_at_ms`: for a reply, when the webhook accepted the message it answers (the
        notifier's end-to-end time); 0 for progress. `refused_patience_s`: how long a refusal is
        asked again first, for a recipient the agent's own whitelist allows (the notifier may
        apply a whitelist edit up to a reload interval after the agent did)."""
        request = notifier_pb2.SendRequest(
            to=to, body=text, idempotency_key=key, accepted_at_ms=accepted_at_ms
        )
        deadline = time.monotonic() + refused_patience_s
        while True:
            try:
                await self.stub.Send(request, timeout=self.timeout_s)
                return
            except grpc.aio.AioRpcError as error:
                if error.code() is not grpc.StatusCode.PERMISSION_DENIED:
                    raise
            if time.monotonic() >= deadline:
                log.warning(
                    "the notifier may not write to this recipient; message dropped", extra={"phone": to}
                )
                return
            await asyncio.sleep(REFUSED_RETRY_S)
