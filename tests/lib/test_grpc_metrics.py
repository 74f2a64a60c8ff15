"""gRPC RED metrics (wacoder.metrics): a real server and channel in-process, each call counted by
method and code on both sides, and timed."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY
from wacoder.grpc import _TokenServerInterceptor
from wacoder.metrics import ClientMetricsUnaryStream, ClientMetricsUnaryUnary, ServerMetrics

CHECK = "/grpc.health.v1.Health/Check"
WATCH = "/grpc.health.v1.Health/Watch"


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def _calls() -> None:
    server = grpc.aio.server(interceptors=[ServerMetrics(), _TokenServerInterceptor("t")])
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", interceptors=[ClientMetricsUnaryUnary(), ClientMetricsUnaryStream()]
    )
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        await stub.Check(health_pb2.HealthCheckRequest(service=""))
        try:
            await stub.Check(health_pb2.HealthCheckRequest(service="nothing"))
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=""))
        async for _ in watch:
            break
        watch.cancel()
        await asyncio.sleep(0.3)  # the server sees the cancellation, the client records it
    finally:
        await channel.close()
        await server.stop(0)


def test_server_and_client_calls_are_counted_by_method_and_code() -> None:
    names = ("wacoder_grpc_server_handled_total", "wacoder_grpc_client_handled_total")
    cases = [(CHECK, "OK"), (CHECK, "NOT_FOUND"), (WATCH, "CANCELLED")]
    before = {(n, m, c): value(n, method=m, code=c) for n in names for m, c in cases}
    timed = {n: value(n, method=CHECK) for n in ("wacoder_grpc_server_handling_seconds_count",)}

    asyncio.run(_calls())

    for (name, method, code), was in before.items():
        assert value(name, method=method, code=code) == was + 1, (name, method, code)
    assert (
        value("wacoder_grpc_server_handling_seconds_count", method=CHECK)
        == timed["wacoder_grpc_server_handling_seconds_count"] + 2
    )
    assert value("wacoder_grpc_client_handling_seconds_count", method=CHECK) >= 2
