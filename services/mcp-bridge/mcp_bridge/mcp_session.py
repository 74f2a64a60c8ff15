"""The long-lived MCP client session to AutoCoder, reconnecting when it drops.

The SDK's streamable-HTTP client lives in anyio task groups and cancel scopes that must be
entered and left by the same task, and one failed HTTP request tears the whole transport
down. So each connection is owned by one dedicated task (`_Connection`): it enters the
transport and ClientSession contexts, initializes, then serves the calls other tasks put on
its queue, each in a child task of its own task group. When the transport fails, that task
ends, every call still waiting on it is failed with `TransportFailure`, and the next call
starts a new connection (lazily: the bridge does not poll a platform nobody is using).

A `TransportFailure` says whether the request may have reached AutoCoder, which is what decides
if a non-idempotent tool may be retried:
  - the connection could not be made, or the server answered 404 for the MCP session
    (it restarted and no longer knows the session): the tool did not run -> not reached;
  - the transport died of connection refusals while this was the only call in flight
    (so the refused POST was this call's): not reached;
  - anything else (a read failed mid-response, the transport died with several calls in
    flight): it may have run.

A response stream that breaks mid-way is swallowed by the SDK (the call would then wait for
its full timeout), so the HTTP transport is wrapped to notice it: the connection then fails
every call in flight at once ("may have run") and closes, and the next call reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import anyio
import anyio.abc
import httpx
from mcp import ClientSession, McpError
from mcp import types as mcp_types
from mcp.client.streamable_http import streamable_http_client
from wacoder import tracing

from mcp_bridge import metrics

log = logging.getLogger("mcp_bridge.mcp_session")

# What the SDK raises when it gives up waiting for a response (httpx.codes.REQUEST_TIMEOUT).
_MCP_TIMEOUT_CODE = 408
# The error the SDK synthesises when the server answers 404 for our MCP session id.
_SESSION_TERMINATED_CODE = 32600
_CONNECT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout)


class TransportFailure(Exception):
    """AutoCoder could not be reached or the connection broke during the call."""

    def __init__(self, message: str, *, may_have_reached: bool) -> None:
        super().__init__(message)
        self.may_have_reached = may_have_reached


class CallTimeout(Exception):
    """AutoCoder did not answer within the call's timeout (the tool may still be running)."""


class ProtocolError(Exception):
    """AutoCoder answered with a JSON-RPC error: it is up, the request was wrong."""


@dataclass(eq=False)
class _Call:
    name: str
    arguments: dict[str, Any]
    meta: dict[str, Any]
    timeout_s: float
    future: asyncio.Future[mcp_types.CallToolResult] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "connection closed"
    leaves = _leaves(exc)
    return "; ".join(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__ for e in leaves[:3])


def _mark_retrieved(future: asyncio.Future[Any]) -> None:
    # Nobody may be waiting on a failed connect; don't let asyncio warn about it.
    if not future.cancelled():
        future.exception()


class _WatchedStream(httpx.AsyncByteStream):
    """A response body that reports when it breaks (the peer went away mid-response)."""

    def __init__(self, inner: httpx.AsyncByteStream, on_broken: Callable[[Exception], None]) -> None:
        self._inner = inner
        self._on_broken = on_broken

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                yield chunk
        except httpx.TransportError as exc:
            self._on_broken(exc)
            raise

    async def aclose(self) -> None:
        await self._inner.aclose()


# `_meta.traceparent` of a JSON-RPC request as httpx serialises it. In a string value (a task
# text) the quotes would be escaped, so only the request's own field matches.
_META_TRACEPARENT = re.compile(rb'"traceparent"\s*:\s*"([0-9a-f-]{55})"')


def _carry_traceparent(request: httpx.Request) -> None:
    """Puts a tool call's trace context (its `_meta.traceparent`, set by the caller's task) in
    the HTTP `traceparent` header as well: the SDK writes requests from a task of its own, which
    the caller's context does not reach, and HTTP servers read the header (ADR 0010)."""
    try:
        found = _META_TRACEPARENT.search(request.content)
    except httpx.RequestNotRead:  # a streamed body: not a JSON-RPC request of ours
        return
    if found is not None:
        request.headers[tracing.TRACEPARENT] = found.group(1).decode()


class _WatchedTransport(httpx.AsyncBaseTransport):
    """httpx's transport, with the tool calls' (POST) response bodies watched for breaks."""

    def __init__(self, on_broken: Callable[[Exception], None]) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self._on_broken = on_broken

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and tracing.enabled():
            _carry_traceparent(request)
        response = await self._inner.handle_async_request(request)
        if request.method != "POST":
            return response
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_WatchedStream(response.stream, self._on_broken),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


class _Connection:
    """One MCP session, owned by one task, from connect until it drops or is closed."""

    def __init__(
        self, url: str, headers: dict[str, str], connect_timeout_s: float, read_timeout_s: float
    ) -> None:
        self.url = url
        self.headers = headers
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.queue: asyncio.Queue[_Call | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[list[mcp_types.Tool]] = loop.create_future()
        self.ready.add_done_callback(_mark_retrieved)
        self.dead = False
        self.in_flight: set[_Call] = set()
        self._group: anyio.abc.TaskGroup | None = None
        # The connection outlives the call that opened it: it belongs to no message's trace.
        self.task = asyncio.create_task(self._run(), name="mcp-connection", context=tracing.detached())

    def submit(self, call: _Call) -> None:
        if self.dead:
            raise TransportFailure("MCP session closed", may_have_reached=False)
        self.queue.put_nowait(call)

    def retire(self) -> None:
        """Stops taking calls; the ones in flight finish, then the session closes."""
        if not self.dead:
            self.dead = True
            self.queue.put_nowait(None)

    async def close(self) -> None:
        self.dead = True
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task

    async def _run(self) -> None:
        error: BaseException | None = None
        timeout = httpx.Timeout(self.read_timeout_s, connect=self.connect_timeout_s)
        try:
            async with (
                httpx.AsyncClient(
                    headers=self.headers, timeout=timeout, transport=_WatchedTransport(self._response_broken)
                ) as http,
                streamable_http_client(self.url, http_client=http) as (read, write, _),
                ClientSession(read, write) as session,
            ):
                with anyio.fail_after(self.connect_timeout_s):
                    await session.initialize()
                    # Also primes the session's output schemas, which call_tool validates against.
                    tools = (await session.list_tools()).tools
                log.info("mcp session established", extra={"tools": len(tools)})
                self.ready.set_result(tools)
                async with anyio.create_task_group() as group:
                    self._group = group
                    while (call := await self.queue.get()) is not None:
                        group.start_soon(self._serve, session, call)
        except asyncio.CancelledError:
            error = None
        except BaseException as exc:  # the transport's task group raises groups of anything
            error = exc
        finally:
            self.dead = True
            self._fail_everything(error)
        if error is not None:
            log.warning("mcp session ended", extra={"reason": _describe(error)})

    def _response_broken(self, exc: Exception) -> None:
        """A POST's response broke off: its call may have run, and will never be answered."""
        reason = f"response from AutoCoder broken off ({type(exc).__name__})"
        log.warning("mcp response broken off", extra={"reason": type(exc).__name__})
        self.dead = True
        for call in list(self.in_flight):
            self._settle(call, TransportFailure(reason, may_have_reached=True))
        if self._group is not None:
            # The waiting calls would otherwise sit out their full timeout on a dead session.
            self._group.cancel_scope.cancel()
        self.queue.put_nowait(None)

    async def _serve(self, session: ClientSession, call: _Call) -> None:
        if call.future.done():  # the caller gave up while the call was queued
            return
        self.in_flight.add(call)
        with anyio.CancelScope() as scope:
            # The gRPC caller went away: stop waiting on AutoCoder for it.
            call.future.add_done_callback(lambda f: scope.cancel() if f.cancelled() else None)
            try:
                result = await session.call_tool(
                    call.name,
                    call.arguments,
                    read_timeout_seconds=timedelta(seconds=call.timeout_s),
                    meta=call.meta,
                )
            except McpError as exc:
                self._settle(call, self._from_mcp_error(exc))
            except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream) as exc:
                # The session's streams are gone for good (the SDK's receive loop can end quietly
                # when an answer races a cancelled call): the next calls need a new connection.
                self.retire()
                self._settle(
                    call,
                    TransportFailure(f"MCP session closed ({type(exc).__name__})", may_have_reached=True),
                )
            except Exception as exc:
                # e.g. the SDK's check of structured output against the tool's schema.
                self._settle(call, ProtocolError(f"{type(exc).__name__}: {exc}"))
            else:
                self._settle(call, result)
        # A cancellation by the task group (transport died) propagates past here and leaves
        # the call in in_flight, for _fail_everything to settle with the reason.

    def _from_mcp_error(self, exc: McpError) -> Exception:
        code = exc.error.code
        if code == _MCP_TIMEOUT_CODE:
            return CallTimeout(str(exc))
        if code == _SESSION_TERMINATED_CODE:
            # AutoCoder restarted and forgot our session: it rejected the request unread.
            self.retire()
            return TransportFailure(
                "AutoCoder no longer knows the MCP session (it restarted)", may_have_reached=False
            )
        if code == mcp_types.CONNECTION_CLOSED:
            self.retire()
            return TransportFailure("MCP connection closed", may_have_reached=True)
        return ProtocolError(exc.error.message)

    def _settle(self, call: _Call, outcome: mcp_types.CallToolResult | Exception) -> None:
        self.in_flight.discard(call)
        if call.future.done():
            return
        if isinstance(outcome, Exception):
            call.future.set_exception(outcome)
        else:
            call.future.set_result(outcome)

    def _fail_everything(self, error: BaseException | None) -> None:
        reason = _describe(error)
        if not self.ready.done():
            self.ready.set_exception(
                TransportFailure(f"cannot connect to AutoCoder: {reason}", may_have_reached=False)
            )
        refused_only = error is not None and all(isinstance(e, _CONNECT_ERRORS) for e in _leaves(error))
        alone = len(self.in_flight) == 1
        for call in list(self.in_flight):
            self._settle(
                call,
                TransportFailure(
                    f"connection to AutoCoder lost: {reason}", may_have_reached=not (refused_only and alone)
                ),
            )
        while not self.queue.empty():
            queued = self.queue.get_nowait()
            if queued is not None:
                self._settle(
                    queued,
                    TransportFailure(f"connection to AutoCoder lost: {reason}", may_have_reached=False),
                )


class McpSession:
    """What the rest of the bridge sees: call a tool, list the tools; connects as needed."""

    def __init__(
        self, url: str, *, api_key: str | None, connect_timeout_s: float, call_timeout_s: float
    ) -> None:
        self.url = url
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.connect_timeout_s = connect_timeout_s
        # The SDK enforces each call's timeout; httpx's read timeout only backs it up.
        self.read_timeout_s = call_timeout_s + 10
        self.tools: list[mcp_types.Tool] | None = None
        self._connection: _Connection | None = None
        self._closed = False

    async def connect(self) -> _Connection:
        """The live connection, made now if there is none (one attempt shared by all callers)."""
        if self._closed:
            raise TransportFailure("mcp-bridge is shutting down", may_have_reached=False)
        if self._connection is None or self._connection.dead:
            self._connection = _Connection(
                self.url, self.headers, self.connect_timeout_s, self.read_timeout_s
            )
        connection = self._connection
        try:
            async with asyncio.timeout(self.connect_timeout_s + 1):
                tools = await asyncio.shield(connection.ready)
        except TimeoutError:
            await connection.close()
            raise TransportFailure("timed out connecting to AutoCoder", may_have_reached=False) from None
        self.tools = tools  # refreshed on every (re)connect
        metrics.tools_listed(tools)
        return connection

    async def call_tool(
        self, name: str, arguments: dict[str, Any], meta: dict[str, Any], timeout_s: float
    ) -> mcp_types.CallToolResult:
        """One attempt. Raises TransportFailure, CallTimeout or ProtocolError."""
        connection = await self.connect()
        call = _Call(name, arguments, meta, timeout_s)
        connection.submit(call)
        try:
            # The SDK times the call out itself; this only guards against a wedged session.
            async with asyncio.timeout(timeout_s + 2):
                return await asyncio.shield(call.future)
        except TimeoutError:
            connection.retire()
            raise CallTimeout(f"no answer within {timeout_s:g} s") from None
        except asyncio.CancelledError:
            call.future.cancel()
            raise

    async def close(self) -> None:
        self._closed = True
        if self._connection is not None:
            await self._connection.close()
