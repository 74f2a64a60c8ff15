"""Traces (OpenTelemetry): one trace per WhatsApp message, across every service (ADR 0010).

Off unless OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set, from the
environment or `.env` (the environment wins); OTEL_SDK_DISABLED=true turns it off regardless.
On: an SDK TracerProvider whose every knob is the standard `OTEL_*` variable (the service name
defaults to the service's own; OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER,
OTEL_BSP_*, OTEL_EXPORTER_OTLP_* headers, timeout, compression), a BatchSpanProcessor and the
OTLP/HTTP exporter; the provider flushes at exit (a graceful stop of any service).

Off must cost next to nothing on the message path (a CPU-per-message budget): the gRPC
interceptors are not installed at all, `span` hands back a shared no-op, and `traceparent`
returns "" after one context-variable read, so nothing is serialised per message.

How the context crosses process boundaries (W3C Trace Context):
- gRPC: metadata, by the client and server interceptors here (wacoder.grpc installs them);
- Redis streams (inbox, outbox) and the delivery record: a plain `traceparent` field beside the
  encrypted payload (it says nothing about the user);
- MCP: `_meta.traceparent` of the request and the HTTP `traceparent` header (mcp-bridge).

Privacy: span names and attributes hold methods, tool names, status codes, ids (MessageSid,
outbox ids, session ids) and keyed hashes at most; never a phone number, message text or secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import INVALID_SPAN, Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from wacoder.metrics import code_name, server_code
from wacoder.server_calls import ServerCall, observed

log = logging.getLogger("wacoder.tracing")

TRACEPARENT = "traceparent"
_HEALTH = "/grpc.health.v1."
_ENDPOINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
_TRACEPARENT_FORMAT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")

# The carriers of ours (stream entries, the delivery record, MCP) are W3C whatever
# OTEL_PROPAGATORS says; gRPC metadata uses the configured propagators.
_W3C = TraceContextTextMapPropagator()

_enabled = False
_tracer: trace.Tracer = trace.NoOpTracer()


def _from_dotenv(path: str = ".env") -> None:
    """`OTEL_*` lines of `.env` as defaults (the SDK reads only the environment): the same rule
    as every other variable of ours, the environment wins."""
    if not os.path.isfile(path):
        return
    from dotenv import dotenv_values  # pydantic-settings' own .env reader

    for name, value in dotenv_values(path).items():
        if name.startswith("OTEL_") and value is not None:
            os.environ.setdefault(name, value)


def configured() -> bool:
    """Whether this process's environment asks for traces."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return any(os.environ.get(name, "").strip() for name in _ENDPOINTS)


def setup_tracing(service: str) -> bool:
    """Installs the exporting TracerProvider for `service` when traces are configured; True if
    it did. Call once, early in `main`, before any gRPC channel or server is made."""
    global _enabled, _tracer
    _from_dotenv()
    if _enabled or not configured():
        return _enabled
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES name the service when they say something.
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service}))
    # The sampler (OTEL_TRACES_SAMPLER), the batch settings (OTEL_BSP_*) and the exporter's
    # endpoint, headers, timeout and compression all come from their standard variables.
    provider = TracerProvider(resource=resource)  # shutdown_on_exit: flushed when the process ends
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _tracer = provider.get_tracer("wacoder")
    _enabled = True
    log.info("tracing on", extra={"service_name": resource.attributes.get(SERVICE_NAME)})
    return True


def enabled() -> bool:
    return _enabled


def span(
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
    parent: str | None = None,
    links: Sequence[Link] = (),
) -> contextlib.AbstractContextManager[Span]:
    """A span made current for the `with` block (ended at its end, an escaping exception
    recorded). `parent`: a traceparent carried from elsewhere (a stream entry) to continue;
    None or "" continues the current context. Off: a bare no-op around the shared invalid span."""
    if not _enabled:
        return contextlib.nullcontext(INVALID_SPAN)
    context = extract(parent) if parent else None
    return _tracer.start_as_current_span(
        name, context=context, kind=kind, attributes=dict(attributes or {}), links=links
    )


def traceparent() -> str:
    """The current span as a W3C `traceparent`, or "" without a valid span (tracing off)."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return ""
    return f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{span_context.trace_flags:02x}"


def extract(value: str | None) -> otel_context.Context | None:
    """The context a carried `traceparent` continues; None when there is none or it is malformed."""
    if not value or not _TRACEPARENT_FORMAT.match(value):
        return None
    context = _W3C.extract({TRACEPARENT: value})
    return context if trace.get_current_span(context).get_span_context().is_valid else None


def link_to(value: str | None) -> Link | None:
    """A link to the span a carried `traceparent` names (the status callback's to its send)."""
    context = extract(value)
    if context is None:
        return None
    return Link(trace.get_current_span(context).get_span_context())


def detached() -> contextvars.Context:
    """A copy of the current context without the current trace: for a task that outlives the
    message that started it (a progress relay), so its work does not land in that trace."""
    copy = contextvars.copy_context()
    if _enabled:
        copy.run(otel_context.attach, otel_context.Context())
    return copy


def fail(current: Span, error: str) -> None:
    """Marks `current` failed with a short, non-private description (a type or code name)."""
    current.set_status(Status(StatusCode.ERROR, error))


# --- gRPC: a client and a server span per call, the context in the call's metadata --------------


def _method_parts(method: str) -> tuple[str, str]:
    service, _, name = method.lstrip("/").partition("/")
    return service, name


def _rpc_attributes(method: str) -> dict[str, str]:
    service, name = _method_parts(method)
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}


class _ClientTracing:
    """Starts a CLIENT span, puts its context in the call's metadata, ends it when the call ends
    (for a server stream: when the stream ends) with the status code."""

    def _start(self, details: grpc.aio.ClientCallDetails) -> tuple[Span, grpc.aio.ClientCallDetails]:
        method = details.method.decode() if isinstance(details.method, bytes) else str(details.method)
        span_ = _tracer.start_span(
            method.lstrip("/"), kind=SpanKind.CLIENT, attributes=_rpc_attributes(method)
        )
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span_))
        metadata = grpc.aio.Metadata(*(details.metadata or ()), *carrier.items())
        return span_, grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )

    @staticmethod
    def _end_when_done(span_: Span, call: Any) -> Any:
        async def end() -> None:
            try:
                code = await call.code()  # the call is over: answers at once
            except Exception:
                code = grpc.StatusCode.UNKNOWN
            name = code_name(code)
            span_.set_attribute("rpc.grpc.status_code", getattr(grpc.StatusCode, name).value[0])
            if name != "OK":
                fail(span_, name)
            span_.end()

        def done(_: Any) -> None:
            task = asyncio.get_running_loop().create_task(end())
            _ending.add(task)
            task.add_done_callback(_ending.discard)

        call.add_done_callback(done)
        return call


# Tasks that end a finished call's span; kept here so that they are not collected early.
_ending: set[asyncio.Task[None]] = set()


def _is_probe(details: grpc.aio.ClientCallDetails) -> bool:
    method = details.method.decode() if isinstance(details.method, bytes) else str(details.method)
    return method.startswith(_HEALTH)


class ClientTracingUnaryUnary(_ClientTracing, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        if _is_probe(details):  # health checks (GET /health) are not worth a trace
            return await continuation(details, request)
        span_, details = self._start(details)
        try:
            call = await continuation(details, request)
        except BaseException:
            span_.end()
            raise
        return self._end_when_done(span_, call)


class ClientTracingUnaryStream(_ClientTracing, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        span_, details = self._start(details)
        try:
            call = await continuation(details, request)
        except BaseException:
            span_.end()
            raise
        return self._end_when_done(span_, call)


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """The tracing interceptors of a channel: none while tracing is off."""
    if not _enabled:
        return []
    return [ClientTracingUnaryUnary(), ClientTracingUnaryStream()]


def _server_span(method: str, context: Any) -> contextlib.AbstractContextManager[Span]:
    metadata = {str(k): str(v) for k, v in (context.invocation_metadata() or ())}
    return _tracer.start_as_current_span(
        method.lstrip("/"),
        context=propagate.extract(metadata),
        kind=SpanKind.SERVER,
        attributes=_rpc_attributes(method),
        record_exception=False,  # an abort is an exception too; its code says what happened
        set_status_on_exception=False,
    )


def _close_server_span(span_: Span, context: Any, outcome: str) -> None:
    name = server_code(context, outcome)
    code = getattr(grpc.StatusCode, name, grpc.StatusCode.UNKNOWN)
    span_.set_attribute("rpc.grpc.status_code", code.value[0])
    # A server's span is failed only by what is its own fault (semantic conventions).
    if name in ("UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"):
        fail(span_, name)


@contextlib.contextmanager
def _traced(call: ServerCall) -> Iterator[None]:
    with _server_span(call.method, call.context) as span_:
        try:
            yield
        finally:
            _close_server_span(span_, call.context, call.outcome)


class ServerTracing(grpc.aio.ServerInterceptor):
    """A SERVER span per call, continuing the caller's context from the metadata."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(_HEALTH):
            return handler  # unknown methods and probes are not worth a trace
        return observed(handler, details.method, _traced)


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """The tracing interceptor of a server: none while tracing is off."""
    return [ServerTracing()] if _enabled else []
