"""The gRPC face of the notifier: `Send` stores a message in the outbox and returns."""

from __future__ import annotations

import logging
import uuid

import grpc
from redis.exceptions import RedisError
from wacoder.botconfig import BotConfigSource
from wacoder.v1 import notifier_pb2, notifier_pb2_grpc

from notifier import metrics
from notifier.outbox import Outbox

log = logging.getLogger("notifier.service")


class NotifierService(notifier_pb2_grpc.NotifierServiceServicer):
    def __init__(self, outbox: Outbox, config: BotConfigSource) -> None:
        self.outbox = outbox
        self.config = config

    async def Send(
        self, request: notifier_pb2.SendRequest, context: grpc.aio.ServicerContext
    ) -> notifier_pb2.SendResponse:
        to = request.to.strip()
        media = [url for url in request.media_urls if url.strip()]
        if not to or not (request.body or media):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "to and body are required")
        # Without a key there is nothing to de-duplicate on; every such call is a new message.
        key = request.idempotency_key or f"anon:{uuid.uuid4()}"
        try:
            whitelisted = self.config.current.is_allowed(to)
            result = await self.outbox.enqueue(
                to, request.body, key, media, whitelisted=whitelisted, accepted_at_ms=request.accepted_at_ms
            )
        except (RedisError, OSError) as exc:
            log.warning("outbox unavailable", extra={"phone": to, "error": type(exc).__name__})
            await context.abort(grpc.StatusCode.UNAVAILABLE, "outbox unavailable, retry later")
        if result.refused:
            log.warning("refused: recipient not whitelisted and silent for 24 h", extra={"phone": to})
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "recipient is not whitelisted and has not written within 24 hours",
            )
        if result.duplicate:
            metrics.DUPLICATES.inc()
            log.info("duplicate send ignored", extra={"phone": to})
        else:
            metrics.QUEUED.inc()
            log.info("queued", extra={"phone": to, "parts": len(result.outbox_ids)})
        return notifier_pb2.SendResponse(duplicate=result.duplicate, outbox_ids=result.outbox_ids)
