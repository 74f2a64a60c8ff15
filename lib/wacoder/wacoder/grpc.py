"""gRPC plumbing shared by the agent, mcp-bridge and notifier: a server with the standard
health service and graceful shutdown, and client channels to the other services."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Iterable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

log = logging.getLogger("wacoder.grpc")

# Generated `add_XServicer_to_server` functions and their servicer instance.
Registration = tuple[Callable[[object, grpc.aio.Server], None], object]

_CHANNEL_OPTIONS = [
    # Reconnect quickly after a peer restarts (the default backoff grows to two minutes).
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.keepalive_time_ms", 30_000),
]


def channel(target: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)


def listen_address(addr: str) -> str:
    """The address to bind for a service known to others as `addr` (host:port).

    A loopback address binds loopback only; anything else binds every interface, as a
    container behind a Kubernetes Service must.
    """
    host, _, port = addr.rpartition(":")
    return addr if host in ("127.0.0.1", "localhost", "[::1]") else f"[::]:{port}"


async def serve(
    addr: str,
    registrations: Iterable[Registration],
    service_names: Iterable[str],
    *,
    on_stop: Callable[[], Awaitable[None]] | None = None,
    grace_s: float = 5.0,
) -> None:
    """Serves until SIGTERM or SIGINT, then drains in-flight calls for `grace_s` seconds."""
    server = grpc.aio.server()
    for add, servicer in registrations:
        add(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    server.add_insecure_port(listen_address(addr))
    await server.start()
    for name in ["", *service_names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("grpc server listening", extra={"addr": addr})

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("grpc server stopping")
    for name in ["", *service_names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    if on_stop is not None:
        await on_stop()
    await server.stop(grace_s)


async def check_health(target_channel: grpc.aio.Channel, timeout_s: float = 1.0) -> bool:
    """True when the service behind the channel answers its health check with SERVING."""
    stub = health_pb2_grpc.HealthStub(target_channel)
    try:
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
    except grpc.aio.AioRpcError:
        return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING
