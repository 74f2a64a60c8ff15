"""The agent service: wires the inbox, the conversation logic, AutoCoder (through the
bridge) and the notifier, and serves SubmitMessage over gRPC."""

from __future__ import annotations

import asyncio
import logging

import uvloop
from wacoder import grpc as wgrpc
from wacoder import keys
from wacoder.botconfig import BotConfigSource
from wacoder.crypto import StateCipher
from wacoder.inbox import Inbox
from wacoder.leases import ShardLeases, replica_name
from wacoder.logs import setup_logging
from wacoder.metrics import on_scrape
from wacoder.ops_http import start_ops_server
from wacoder.redis import Replication, open_redis, ping
from wacoder.settings import Settings, service_settings
from wacoder.streams import KeyedStreamConsumer, ShardConsumers
from wacoder.tracing import setup_tracing
from wacoder.v1 import agent_pb2_grpc, bridge_pb2_grpc, notifier_pb2_grpc

from agent import metrics
from agent.autocoder import AutoCoder
from agent.dialogue import FreeTextResponder, OfflineResponder
from agent.media import MediaReader
from agent.outbound import Outbound
from agent.processor import Processor
from agent.progress import ProgressRelay
from agent.servicer import AgentServicer
from agent.state import StateStore

log = logging.getLogger("agent.main")


def free_text_responder(
    settings: Settings, config: BotConfigSource, autocoder: AutoCoder
) -> FreeTextResponder:
    if settings.openai_api_key is None:
        log.info("no OPENAI_API_KEY: free text goes to the offline router")
        return OfflineResponder()
    from agent.llm import LlmResponder  # langchain is heavy: import it only when used

    return LlmResponder(settings, config, autocoder)


async def serve(settings: Settings) -> None:
    redis = await open_redis(settings)
    replication = Replication.from_settings(redis, settings)
    cipher = StateCipher.from_settings(settings)
    salt = settings.secret("phone_hash_salt")
    inbox = Inbox(redis, cipher, salt, replication)
    bot_config = BotConfigSource(settings)
    watching = asyncio.create_task(bot_config.watch())
    bridge_channel = wgrpc.channel(settings.mcp_bridge_addr, settings)
    notifier_channel = wgrpc.channel(settings.notifier_addr, settings)
    autocoder = AutoCoder(
        bridge_pb2_grpc.McpBridgeServiceStub(bridge_channel), settings.mcp_call_timeout_s + 5
    )
    outbound = Outbound(notifier_pb2_grpc.NotifierServiceStub(notifier_channel), settings.grpc_fast_timeout_s)
    progress = ProgressRelay(
        redis, cipher, autocoder, outbound, give_up_after_s=settings.progress_give_up_after_s
    )
    media = MediaReader(settings, bot_config)
    processor = Processor(
        redis=redis,
        cipher=cipher,
        inbox=inbox,
        store=StateStore(redis, cipher, salt),
        autocoder=autocoder,
        outbound=outbound,
        free_text=free_text_responder(settings, bot_config, autocoder),
        progress=progress,
        hash_salt=salt,
        allowed=lambda phone: bot_config.current.is_allowed(phone),
        media=media,
    )
    replica = replica_name(settings, settings.agent_addr)

    def inbox_consumer(shard: int) -> KeyedStreamConsumer:
        return KeyedStreamConsumer(
            redis,
            stream=keys.inbox_stream(shard),
            group=keys.INBOX_GROUP,
            consumer=replica,
            key_of=lambda fields: fields["key"],
            handle=processor.handle,
            claim_idle_ms=settings.stream_claim_idle_ms,
            retain=settings.inbox_maxlen,
            take_over=True,
        )

    consumers = ShardConsumers(inbox_consumer, drain_s=5.0)

    # A shard's inbox and its sessions' progress relays belong to the replica holding its lease.
    async def acquired(shard: int) -> None:
        await consumers.start(shard)
        await progress.resume(shard)

    async def released(shard: int) -> None:
        await consumers.stop(shard)
        await progress.release(shard)

    async def lost(shard: int) -> None:
        await consumers.cancel(shard)
        await progress.release(shard)

    leases = ShardLeases(
        redis,
        service="agent",
        replica=replica,
        shards=settings.stream_shards,
        ttl_ms=settings.shard_lease_ttl_ms,
        on_acquired=acquired,
        on_released=released,
        on_lost=lost,
    )
    leasing = asyncio.create_task(leases.run(), name="shard-leases")

    async def on_stop() -> None:
        # Gives every shard back once its running turns finished (or stay pending for the next
        # owner), so the other replicas take over at once.
        await leases.stop()
        leasing.cancel()
        watching.cancel()
        await progress.stop()

    # /livez, /readyz: ready while Redis (its inbox) answers.
    # /metrics reads the inbox depth when scraped.
    on_scrape(lambda: metrics.refresh_inbox(redis))
    on_scrape(lambda: metrics.refresh_active_users(redis))
    ops = await start_ops_server(settings.metrics_host, settings.agent_metrics_port, lambda: ping(redis))
    await wgrpc.serve(
        settings.agent_addr,
        [(agent_pb2_grpc.add_AgentServiceServicer_to_server, AgentServicer(inbox))],
        ["wacoder.v1.AgentService"],
        settings,
        on_stop=on_stop,
    )
    await ops.stop()
    await media.aclose()
    await bridge_channel.close()
    await notifier_channel.close()
    await replication.aclose()
    await redis.aclose()


def main() -> None:
    settings = service_settings("agent")
    setup_logging(settings, "agent")
    setup_tracing("agent")  # before the channels and the server: they trace only if it is on
    uvloop.run(serve(settings))  # uvloop: the event loop's own work is most of a message's CPU


if __name__ == "__main__":
    main()
