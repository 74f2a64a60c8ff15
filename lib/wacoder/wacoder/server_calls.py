"""Observing the calls a gRPC server handles: one wrapper that both the metrics
(wacoder.metrics) and the traces (wacoder.tracing) put around a handler, so that how a call's
outcome is told (OK, CANCELLED when the caller went away, UNKNOWN when it raised) is written
once."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import grpc


@dataclass
class ServerCall:
    method: str
    context: Any  # grpc.aio.ServicerContext
    outcome: str = "UNKNOWN"  # set to OK or CANCELLED before the observer's exit runs


# Entered around the call (its body runs inside, e.g. with a span current); reads `outcome`
# when it exits.
Observer = Callable[[ServerCall], AbstractContextManager[object]]


def observed(handler: grpc.RpcMethodHandler, method: str, observe: Observer) -> grpc.RpcMethodHandler:
    """`handler` with every call observed; client-streaming handlers (none of our services has
    one) are returned as they are."""
    if handler.unary_unary is not None:
        wrap, behavior = grpc.unary_unary_rpc_method_handler, handler.unary_unary
    elif handler.unary_stream is not None:
        wrap, behavior = grpc.unary_stream_rpc_method_handler, handler.unary_stream
    else:
        return handler
    return wrap(
        _observed_behavior(method, behavior, observe),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _observed_behavior(method: str, behavior: Callable[..., Any], observe: Observer) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(behavior):

        async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
            call = ServerCall(method, context)
            with observe(call):
                try:
                    async for reply in behavior(request, context):
                        yield reply
                    call.outcome = "OK"
                except (asyncio.CancelledError, GeneratorExit):
                    call.outcome = "CANCELLED"
                    raise

        return streaming

    async def unary(request: Any, context: Any) -> Any:
        call = ServerCall(method, context)
        with observe(call):
            try:
                result = behavior(request, context)
                if inspect.isawaitable(result):
                    result = await result
                call.outcome = "OK"
                return result
            except asyncio.CancelledError:
                call.outcome = "CANCELLED"
                raise

    return unary
