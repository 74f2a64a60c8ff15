"""Replies leave through the notifier. Each carries an idempotency key derived from what
caused it, so sending the same reply again (after a crash) delivers it once."""

from __future__ import annotations

from wacoder.v1 import notifier_pb2, notifier_pb2_grpc


class Outbound:
    def __init__(self, stub: notifier_pb2_grpc.NotifierServiceStub, timeout_s: float) -> None:
        self.stub = stub
        self.timeout_s = timeout_s

    async def send(self, to: str, text: str, key: str) -> None:
        """One message, however long: the notifier splits it into numbered parts of at most
        1,600 characters in one atomic write, so no other message to the same user can land
        between its parts. Raises grpc errors: the caller leaves its work pending, to be retried."""
        await self.stub.Send(
            notifier_pb2.SendRequest(to=to, body=text, idempotency_key=key), timeout=self.timeout_s
        )
