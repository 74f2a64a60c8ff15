"""Prometheus metrics every service shares: the `/metrics` route of the ops port
(wacoder.ops_http) and gRPC RED metrics (rate, errors, duration) per method, for servers and
clients, as interceptors that wacoder.grpc installs on every server and channel.

Labels are bounded by construction: a gRPC method is one the server has a handler for (or one
of our own clients calls), a code is one of gRPC's status codes. Never a phone number, a hash, a
session id or any other value a request brings.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import grpc
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest

from wacoder.ops_http import Reply
from wacoder.server_calls import ServerCall, observed

log = logging.getLogger("wacoder.metrics")

# gRPC calls between our services take milliseconds (a free-text turn through the LLM, seconds).
_GRPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

GRPC_SERVER_HANDLED = Counter(
    "wacoder_grpc_server_handled_total",
    "gRPC calls this server completed, by method and status code",
    ["method", "code"],
)
GRPC_SERVER_SECONDS = Histogram(
    "wacoder_grpc_server_handling_seconds",
    "Time this server took per gRPC call",
    ["method"],
    buckets=_GRPC_BUCKETS,
)
GRPC_CLIENT_HANDLED = Counter(
    "wacoder_grpc_client_handled_total",
    "gRPC calls this client completed, by method and status code",
    ["method", "code"],
)
GRPC_CLIENT_SECONDS = Histogram(
    "wacoder_grpc_client_handling_seconds",
    "Time a gRPC call of this client took",
    ["method"],
    buckets=_GRPC_BUCKETS,
)


def from_zero(metric: Counter | Histogram, *label_values: str | tuple[str, ...]) -> None:
    """Exposes these label values at 0 from the start. A series that first appears at 1 is
    invisible to rate() and increase(): after a restart, the first dead letter or error of a
    kind would never show on a dashboard nor fire an alert."""
    for values in label_values:
        metric.labels(*((values,) if isinstance(values, str) else values))


# Async updates run before each scrape: gauges read from Redis (queue depths) are read when
# Prometheus asks, not on a timer. Each gets a short deadline; a failing one keeps its last values.
Refresh = Callable[[], Awaitable[None]]
_refreshers: list[Refresh] = []
REFRESH_TIMEOUT_S = 2.0


def on_scrape(refresh: Refresh) -> None:
    """Runs `refresh` before every scrape of /metrics on this process's ops port."""
    _refreshers.append(refresh)


async def metrics_route() -> Reply:
    """GET /metrics of the ops port: the default registry in Prometheus' text format."""
    for refresh in list(_refreshers):
        try:
            async with asyncio.timeout(REFRESH_TIMEOUT_S):
                await refresh()
        except Exception as error:
            log.warning("metrics refresh failed", extra={"error": repr(error)})
    return Reply(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)


def code_name(code: Any) -> str:
    if isinstance(code, grpc.StatusCode):
        return code.name
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return status.name
    return "UNKNOWN"


def server_code(context: grpc.aio.ServicerContext, outcome: str) -> str:
    """The status the call ended with: the one the handler set (or aborted with), else the
    outcome seen here (OK, CANCELLED when the caller went away, UNKNOWN on an exception)."""
    code = context.code()
    if code is None or outcome == "CANCELLED":
        return outcome
    return code_name(code)


@contextlib.contextmanager
def _measured(call: ServerCall) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        GRPC_SERVER_HANDLED.labels(call.method, server_code(call.context, call.outcome)).inc()
        GRPC_SERVER_SECONDS.labels(call.method).observe(time.perf_counter() - started)


class ServerMetrics(grpc.aio.ServerInterceptor):
    """Counts and times every call a server handles (the outermost interceptor: a call another
    interceptor refuses is counted with the code it got)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler  # an unknown method: its name is whatever the caller sent
        return observed(handler, details.method, _measured)


# Tasks that record a finished client call; kept here so that they are not collected early.
_recording: set[asyncio.Task[None]] = set()


class _ClientMetrics:
    def _watch(self, details: grpc.aio.ClientCallDetails, call: Any) -> Any:
        method = details.method.decode() if isinstance(details.method, bytes) else str(details.method)
        started = time.perf_counter()

        async def record() -> None:
            try:
                code = code_name(await call.code())
            except Exception:
                code = "UNKNOWN"
            GRPC_CLIENT_HANDLED.labels(method, code).inc()
            GRPC_CLIENT_SECONDS.labels(method).observe(time.perf_counter() - started)

        def done(_: Any) -> None:
            task = asyncio.get_running_loop().create_task(record())
            _recording.add(task)
            task.add_done_callback(_recording.discard)

        call.add_done_callback(done)
        return call


# One class per call shape, as a channel files each interceptor under the first shape it matches.
class ClientMetricsUnaryUnary(_ClientMetrics, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return self._watch(details, await continuation(details, request))


class ClientMetricsUnaryStream(_ClientMetrics, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return self._watch(details, await continuation(details, request))
