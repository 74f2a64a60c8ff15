"""`python -m notifier.main`: the gRPC Send endpoint and the outbox worker in one process."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import uvloop
from wacoder.botconfig import BotConfigSource
from wacoder.crypto import StateCipher
from wacoder.grpc import serve
from wacoder.leases import ShardLeases, replica_name
from wacoder.logs import setup_logging
from wacoder.metrics import on_scrape
from wacoder.ops_http import start_ops_server
from wacoder.redis import open_redis, ping
from wacoder.settings import service_settings
from wacoder.tracing import setup_tracing
from wacoder.v1 import notifier_pb2, notifier_pb2_grpc

from notifier.metrics import refresh_outbox
from notifier.outbox import Outbox
from notifier.rate_limit import SendRateLimiter
from notifier.service import NotifierService
from notifier.twilio_sender import TwilioSender
from notifier.worker import OutboxWorker

log = logging.getLogger("notifier.main")

SERVICE_NAME = notifier_pb2.DESCRIPTOR.services_by_name["NotifierService"].full_name


async def run() -> None:
    settings = service_settings("notifier")
    setup_logging(settings, "notifier")
    setup_tracing("notifier")  # before the server: it traces only if this is on
    redis = await open_redis(settings)
    cipher = StateCipher.from_settings(settings)
    outbox = Outbox(redis, cipher, settings)
    sender = TwilioSender(settings)
    limiter = SendRateLimiter.from_settings(redis, settings)
    worker = OutboxWorker(
        redis, outbox, sender, limiter, settings, consumer=replica_name(settings, settings.notifier_addr)
    )
    # Which outbox shards this replica sends: a shard at a time, one replica per shard.
    leases = ShardLeases(
        redis,
        service="notifier",
        replica=worker.consumer,
        shards=settings.stream_shards,
        ttl_ms=settings.shard_lease_ttl_ms,
        on_acquired=worker.shards.start,
        on_released=worker.shards.stop,
        on_lost=worker.shards.cancel,
    )
    leasing = asyncio.create_task(leases.run(), name="shard-leases")
    bot_config = BotConfigSource(settings)
    watching = asyncio.create_task(bot_config.watch(), name="bot-config")
    log.info("notifier starting", extra={"consumer": worker.consumer})

    async def on_stop() -> None:
        # Sends already at Twilio get recorded; everything else stays pending for the shards'
        # next owners, who take over at once: the leases are given back.
        worker.stopping.set()
        await leases.stop()
        leasing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await leasing

    # /livez, /readyz: ready while Redis (its outbox) answers; /metrics reads the outbox depth.
    on_scrape(lambda: refresh_outbox(redis))
    ops = await start_ops_server(settings.metrics_host, settings.notifier_metrics_port, lambda: ping(redis))
    try:
        await serve(
            settings.notifier_addr,
            [(notifier_pb2_grpc.add_NotifierServiceServicer_to_server, NotifierService(outbox, bot_config))],
            [SERVICE_NAME],
            settings,
            on_stop=on_stop,
        )
    finally:
        watching.cancel()
        await ops.stop()
        await sender.close()
        await redis.aclose()
        log.info("notifier stopped")


def main() -> None:
    uvloop.run(run())  # uvloop: the event loop's own work is most of a message's CPU


if __name__ == "__main__":
    main()
