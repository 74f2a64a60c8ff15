"""`wacoder.grpc.channel` over several replicas: a comma-separated list of addresses (or a
`dns:///` name) is one channel that balances calls round robin, still carries the service token,
still speaks mutual TLS, and keeps serving when a replica stops. In-process gRPC servers."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health_pb2, health_pb2_grpc
from wacoder import grpc as wgrpc
from wacoder.settings import Settings

from tests.test_mtls import _certificate, _key, _pem_key

TOKEN = "test-service-token"


class CountingHealth(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """A replica: answers SERVING and remembers the token each call carried."""

    def __init__(self) -> None:
        self.tokens: list[str] = []

    async def Check(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.tokens.append(dict(context.invocation_metadata() or ()).get("authorization", ""))
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


class Replica:
    def __init__(self, server: grpc.aio.Server, servicer: CountingHealth, address: str) -> None:
        self.server = server
        self.servicer = servicer
        self.address = address

    @property
    def calls(self) -> int:
        return len(self.servicer.tokens)


@asynccontextmanager
async def replicas(
    count: int, host: str = "127.0.0.1", tls: grpc.ServerCredentials | None = None
) -> AsyncIterator[list[Replica]]:
    started: list[Replica] = []
    try:
        for _ in range(count):
            server = grpc.aio.server()
            servicer = CountingHealth()
            health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
            listen = f"[{host}]:0" if ":" in host else f"{host}:0"
            port = server.add_secure_port(listen, tls) if tls else server.add_insecure_port(listen)
            await server.start()
            started.append(Replica(server, servicer, listen.replace(":0", f":{port}")))
        yield started
    finally:
        for replica in started:
            await replica.server.stop(0)


def settings(**tls: str) -> Settings:
    return Settings(service_token=TOKEN, wacoder_env="production", **tls)  # type: ignore[arg-type]


async def check(channel: grpc.aio.Channel) -> None:
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def spread_evenly(channel: grpc.aio.Channel, servers: list[Replica]) -> None:
    """Once every replica is connected, consecutive calls take turns over all of them."""
    for _ in range(50):  # round robin sends calls only to connected replicas: wait for all
        await check(channel)
        if all(r.calls for r in servers):
            break
        await asyncio.sleep(0.02)
    before = [r.calls for r in servers]
    for _ in range(10 * len(servers)):
        await check(channel)
    assert [r.calls - b for r, b in zip(servers, before, strict=True)] == [10] * len(servers)


def test_a_single_address_is_dialled_as_before() -> None:
    assert wgrpc.channel_target("127.0.0.1:50051") == ("127.0.0.1:50051", [])
    assert wgrpc.channel_target("agent:50051") == ("agent:50051", [])


def test_a_list_becomes_one_round_robin_target() -> None:
    target, options = wgrpc.channel_target("127.0.0.1:50052, 127.0.0.1:50062")
    assert target == "ipv4:127.0.0.1:50052,127.0.0.1:50062"
    # The authority is the first address, so the TLS hostname check has one name to check.
    assert dict(options) == {
        "grpc.lb_policy_name": "round_robin",
        "grpc.default_authority": "127.0.0.1:50052",
    }
    assert wgrpc.channel_target("[::1]:50052,[::1]:50062")[0] == "ipv6:[::1]:50052,[::1]:50062"
    assert wgrpc.channel_target("dns:///mcp-bridge:50052") == (
        "dns:///mcp-bridge:50052",
        [("grpc.lb_policy_name", "round_robin")],
    )


@pytest.mark.parametrize(
    ("target", "problem"),
    [
        ("mcp-bridge-0:50052,mcp-bridge-1:50052", "not an IP address"),
        ("127.0.0.1:50052,[::1]:50062", "mixes IPv4 and IPv6"),
        ("::1:50052,::1:50062", "without brackets"),
        ("127.0.0.1,127.0.0.1:50062", "not ip:port"),
        (" , ", "names no address"),
    ],
)
def test_a_list_it_cannot_dial_is_refused_clearly(target: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        wgrpc.channel_target(target)


async def test_calls_are_spread_over_every_replica_and_survive_one_stopping() -> None:
    async with replicas(2) as servers:
        channel = wgrpc.channel(",".join(r.address for r in servers), settings())
        await spread_evenly(channel, servers)
        assert {token for r in servers for token in r.servicer.tokens} == {f"Bearer {TOKEN}"}

        await servers[0].server.stop(0)
        # A call that raced the stop may still have been sent to it (UNAVAILABLE: callers retry).
        try:
            await check(channel)
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE
        # Then the stopped replica is out of the rotation: every call goes to the other one.
        before = servers[1].calls
        for _ in range(20):
            await check(channel)
        assert servers[1].calls - before == 20
        await channel.close()


async def test_a_dns_target_passes_through_round_robin() -> None:
    async with replicas(1) as [server]:
        channel = wgrpc.channel(f"dns:///{server.address}", settings())
        await check(channel)
        assert server.calls == 1
        await channel.close()


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback here")
async def test_a_list_of_ipv6_addresses() -> None:
    async with replicas(2, host="::1") as servers:
        channel = wgrpc.channel(",".join(r.address for r in servers), settings())
        await spread_evenly(channel, servers)
        await channel.close()


async def test_a_list_over_mutual_tls_passes_the_hostname_check(tmp_path: Path) -> None:
    # One certificate for every replica, valid for 127.0.0.1 and localhost (as in test_mtls).
    ca_key, service_key = _key(), _key()
    ca = _certificate("wacoder test CA", ca_key, None, ca_key)
    service = _certificate("wacoder service", service_key, ca.subject, ca_key)
    files = {
        "grpc_tls_ca": ca.public_bytes(serialization.Encoding.PEM),
        "grpc_tls_cert": service.public_bytes(serialization.Encoding.PEM),
        "grpc_tls_key": _pem_key(service_key),
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    credentials = grpc.ssl_server_credentials(
        [(files["grpc_tls_key"], files["grpc_tls_cert"])],
        root_certificates=files["grpc_tls_ca"],
        require_client_auth=True,
    )
    async with replicas(2, tls=credentials) as servers:
        tls = {name: str(tmp_path / name) for name in files}
        channel = wgrpc.channel(",".join(r.address for r in servers), settings(**tls))
        await spread_evenly(channel, servers)
        await channel.close()
