"""Replies leave through the notifier. Each part carries an idempotency key derived from
what caused it, so sending the same reply again (after a crash) delivers it once."""

from __future__ import annotations

from wacoder.v1 import notifier_pb2, notifier_pb2_grpc
from wacoder.whatsapp_text import split_message


def render(text: str) -> list[str]:
    """A WhatsApp-formatted reply as parts of at most 1,600 characters, numbered "(1/3)"."""
    return split_message(text)


class Outbound:
    def __init__(self, stub: notifier_pb2_grpc.NotifierServiceStub, timeout_s: float) -> None:
        self.stub = stub
        self.timeout_s = timeout_s

    async def send(self, to: str, parts: list[str], key: str) -> None:
        """Raises grpc errors: the caller leaves its work pending, to be retried."""
        for index, body in enumerate(parts):
            await self.stub.Send(
                notifier_pb2.SendRequest(to=to, body=body, idempotency_key=f"{key}:{index}"),
                timeout=self.timeout_s,
            )
