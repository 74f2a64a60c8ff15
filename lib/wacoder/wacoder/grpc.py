"""gRPC plumbing shared by the agent, mcp-bridge and notifier: a server with the standard
health service, service-to-service authentication and graceful shutdown, and client channels to
the other services.

Trust between services: every call carries SERVICE_TOKEN (metadata `authorization: Bearer
<token>`, added by a client interceptor), and every server checks it in constant time (a server
interceptor) and answers UNAUTHENTICATED otherwise; only the standard health service stays open,
for probes. With GRPC_TLS_CERT/GRPC_TLS_KEY/GRPC_TLS_CA set, channels are mutual TLS as well.

Several replicas of a service: a client's target may name all of them (a comma-separated list of
addresses, or a `dns:///` name that resolves to every one); calls are then balanced round robin on
the client side (see `channel`).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import signal
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from wacoder import tracing
from wacoder.metrics import ClientMetricsUnaryStream, ClientMetricsUnaryUnary, ServerMetrics
from wacoder.settings import Settings

log = logging.getLogger("wacoder.grpc")

# Generated `add_XServicer_to_server` functions and their servicer instance.
Registration = tuple[Callable[[object, grpc.aio.Server], None], object]

_CHANNEL_OPTIONS = [
    # Reconnect quickly after a peer restarts (the default backoff grows to two minutes).
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.keepalive_time_ms", 30_000),
]
# Spreads calls over every address a target resolves to, skipping the ones that are down.
_ROUND_ROBIN = ("grpc.lb_policy_name", "round_robin")
# Open without the token: probes and load balancers ask these.
_OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)


def _bearer(token: str) -> tuple[str, str]:
    return ("authorization", f"Bearer {token}")


class _TokenClient:
    """Adds the service token to a call's metadata."""

    def __init__(self, token: str) -> None:
        self._metadata = _bearer(token)

    def _with_token(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()), self._metadata)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )


# One class per call shape: a channel files each interceptor under the first shape it matches.
class _TokenUnaryUnary(_TokenClient, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with_token(details), request)


class _TokenUnaryStream(_TokenClient, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with_token(details), request)


class _TokenServerInterceptor(grpc.aio.ServerInterceptor):
    """Refuses a call without the right token (compared in constant time) with UNAUTHENTICATED."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(_OPEN_METHOD_PREFIXES):
            return handler
        presented = dict(details.invocation_metadata or ()).get("authorization", "")
        if hmac.compare_digest(str(presented).encode(), self._expected):
            return handler
        log.warning("refused a call without a valid service token", extra={"method": details.method})
        return _refusal(handler)


async def _unauthenticated(request: Any, context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid service token")


def _refusal(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that only refuses."""
    kind = (
        grpc.unary_stream_rpc_method_handler
        if handler.response_streaming
        else grpc.unary_unary_rpc_method_handler
    )
    return kind(
        _unauthenticated,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _tls_files(settings: Settings) -> tuple[bytes, bytes, bytes] | None:
    """(certificate chain, private key, CA) when mutual TLS is configured."""
    paths = (settings.grpc_tls_cert, settings.grpc_tls_key, settings.grpc_tls_ca)
    if not all(paths):
        return None
    cert, key, ca = (Path(p).read_bytes() for p in paths if p)
    return cert, key, ca


def channel_target(target: str) -> tuple[str, list[tuple[str, str | int]]]:
    """The gRPC target and the extra channel options `channel` uses for `target`.

    - `host:port` (or any other single target): unchanged, no extra options, as ever.
    - `dns:///name:port` (a Kubernetes headless Service): unchanged, balanced round robin over
      every address the name resolves to (re-resolved when a connection drops, at most every 30 s).
    - `ip:port,ip:port,...` (IPv6 in brackets: `[::1]:50051`), or gRPC's own `ipv4:...` /
      `ipv6:...`: one channel over all of them, round robin. Its authority (the `:authority`
      header, and the name the TLS certificate is checked against) is the first address, as if
      only that one had been named: every replica's certificate must be valid for it. Host names
      cannot be listed (a list is never re-resolved: give one `dns:///` name), nor IPv4 mixed
      with IPv6 (one channel, one family): ValueError.
    """
    if target.startswith("dns:"):
        return target, [_ROUND_ROBIN]
    scheme, _, listed = target.partition(":")
    if scheme not in ("ipv4", "ipv6"):
        if "," not in target:
            return target, []
        listed = target
    addresses = [a.strip() for a in listed.split(",") if a.strip()]
    if not addresses:
        raise ValueError(f"gRPC target {target!r} names no address")
    if len(addresses) == 1 and scheme not in ("ipv4", "ipv6"):
        return addresses[0], []
    families = {_ip_family(address, target) for address in addresses}
    if len(families) > 1:
        raise ValueError(f"gRPC target {target!r} mixes IPv4 and IPv6; list one family")
    # Without the override the authority would be the whole list, which no certificate names.
    options: list[tuple[str, str | int]] = [_ROUND_ROBIN, ("grpc.default_authority", addresses[0])]
    return f"{families.pop()}:{','.join(addresses)}", options


def _ip_family(address: str, target: str) -> str:
    """`ipv4` or `ipv6` for one `ip:port` of a list; ValueError for anything else."""
    if address.startswith("["):
        host, separator, port = address[1:].partition("]:")
    else:
        host, separator, port = address.rpartition(":")
    try:
        ip = ipaddress.ip_address(host) if separator else None
    except ValueError:
        ip = None
    if not (separator and port.isdigit() and 0 < int(port) < 65536):
        problem = "is not ip:port"
    elif ip is None:
        problem = "is not an IP address: list IPs, or give one dns:///name:port naming every replica"
    elif ip.version == 6 and not address.startswith("["):
        problem = "is IPv6 without brackets: write [::1]:50051"
    else:
        return f"ipv{ip.version}"
    raise ValueError(f"gRPC target {target!r}: {address!r} {problem}")


def channel(target: str, settings: Settings) -> grpc.aio.Channel:
    """A channel to another of our services: it carries the service token, over mTLS if set.

    `target` is one `host:port`, or every replica of the service: `ip:port,ip:port,...` or
    `dns:///name:port`, with calls balanced round robin over the replicas that are up (see
    `channel_target`). A replica that dies drops out of the rotation (and rejoins when it is back);
    a call that was already on it fails UNAVAILABLE, which the callers retry.
    """
    target, options = channel_target(target)
    options = _CHANNEL_OPTIONS + options
    token = settings.secret("service_token")
    interceptors: list[grpc.aio.ClientInterceptor] = [
        ClientMetricsUnaryUnary(),
        ClientMetricsUnaryStream(),
        # A client span per call, its context in the metadata (none while tracing is off).
        *tracing.client_interceptors(),
        _TokenUnaryUnary(token),
        _TokenUnaryStream(token),
    ]
    tls = _tls_files(settings)
    if tls is None:
        return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
    cert, key, ca = tls
    credentials = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    return grpc.aio.secure_channel(target, credentials, options=options, interceptors=interceptors)


def listen_address(addr: str, settings: Settings) -> str:
    """What a service known to others as `addr` (host:port) binds: GRPC_BIND_HOST and its port
    (loopback unless configured otherwise; 0.0.0.0 in a container behind a Kubernetes Service)."""
    port = addr.rpartition(":")[2]
    return f"{settings.grpc_bind_host}:{port}"


async def serve(
    addr: str,
    registrations: Iterable[Registration],
    service_names: Iterable[str],
    settings: Settings,
    *,
    on_stop: Callable[[], Awaitable[None]] | None = None,
    grace_s: float = 5.0,
) -> None:
    """Serves until SIGTERM or SIGINT, then drains in-flight calls for `grace_s` seconds."""
    # Metrics outermost: a call the token check refuses is counted as UNAUTHENTICATED. Then the
    # server span (none while tracing is off), continuing the caller's trace from the metadata.
    token_check = _TokenServerInterceptor(settings.secret("service_token"))
    server = grpc.aio.server(interceptors=[ServerMetrics(), *tracing.server_interceptors(), token_check])
    for add, servicer in registrations:
        add(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    tls = _tls_files(settings)
    if tls is None:
        server.add_insecure_port(listen_address(addr, settings))
    else:
        cert, key, ca = tls
        credentials = grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=True
        )
        server.add_secure_port(listen_address(addr, settings), credentials)
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
