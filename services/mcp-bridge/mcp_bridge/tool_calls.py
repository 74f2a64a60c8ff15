"""Calling one AutoCoder tool reliably: breaker, retries with backoff, timeout, and turning
the MCP result into JSON.

Retry rule: a transient failure (connection refused, session dropped) is retried with
exponential backoff and jitter, up to `retries` more attempts and within a time budget,
unless the tool is not idempotent and the request may already have reached AutoCoder
(a second create_project would create a second project). A call that carries an
`idempotency_key` is idempotent when the tool's schema declares that argument: AutoCoder
answers a repeat with the first result (ADR 0002). A timeout is never retried: the tool may
still be running, and the caller's patience is already spent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

from mcp import types as mcp_types
from opentelemetry.trace import SpanKind
from wacoder import tracing

from mcp_bridge.breaker import BreakerOpen, CircuitBreaker
from mcp_bridge.mcp_session import CallTimeout, McpSession, ProtocolError, TransportFailure

log = logging.getLogger("mcp_bridge.tool_calls")

# Tools that may run twice without harm; anything else is retried only if it surely did not run.
# cancel_session: a repeat finds the session ended and leaves it so (ADR 0002).
IDEMPOTENT_TOOLS = frozenset(
    {"list_projects", "get_session_details", "get_session_files", "check_system_health", "cancel_session"}
)
# The argument that makes a repeat of a creating tool return the first result (ADR 0002).
IDEMPOTENCY_KEY = "idempotency_key"


class Unavailable(Exception):
    """AutoCoder cannot be reached now (gRPC UNAVAILABLE)."""


@dataclass(frozen=True)
class ToolOutcome:
    result: Any
    is_error: bool = False
    error_message: str = ""

    @property
    def result_json(self) -> str:
        return "" if self.result is None else json.dumps(self.result)


def outcome_of(result: mcp_types.CallToolResult) -> ToolOutcome:
    """Structured content when the server sent it, else the text content parsed as JSON."""
    texts = [c.text for c in result.content if isinstance(c, mcp_types.TextContent)]
    if result.isError:
        return ToolOutcome(None, True, "\n".join(texts) or "AutoCoder reported an error")
    if result.structuredContent is not None:
        return ToolOutcome(result.structuredContent)
    parsed: list[Any] = []
    for text in texts:
        try:
            parsed.append(json.loads(text))
        except ValueError:
            parsed.append({"text": text})
    if not parsed:
        return ToolOutcome({})
    return ToolOutcome(parsed[0] if len(parsed) == 1 else parsed)


class ToolCaller:
    def __init__(
        self,
        session: McpSession,
        breaker: CircuitBreaker,
        *,
        timeout_s: float,
        retries: int,
        backoff_base_s: float,
        retry_budget_s: float,
    ) -> None:
        self.session = session
        self.breaker = breaker
        self.timeout_s = timeout_s
        self.retries = max(0, retries)
        self.backoff_base_s = backoff_base_s
        self.retry_budget_s = retry_budget_s

    def is_idempotent(self, name: str, arguments: dict[str, Any]) -> bool:
        if name in IDEMPOTENT_TOOLS:
            return True
        tool = next((t for t in self.session.tools or [] if t.name == name), None)
        if tool is None:
            return False
        key = arguments.get(IDEMPOTENCY_KEY)
        # Only if the tool knows the argument: an older server would ignore it and run twice.
        if isinstance(key, str) and key and IDEMPOTENCY_KEY in tool.inputSchema.get("properties", {}):
            return True
        # Beyond the known six, trust the server's own hints about its tools.
        if tool.annotations is not None:
            return bool(tool.annotations.readOnlyHint or tool.annotations.idempotentHint)
        return False

    async def call(self, name: str, arguments: dict[str, Any], caller: str) -> ToolOutcome:
        """Raises BreakerOpen or Unavailable (UNAVAILABLE), CallTimeout (DEADLINE_EXCEEDED)."""
        self.breaker.acquire()
        verdict_given = False
        try:
            outcome = await self._attempts(name, arguments, caller)
        except (TransportFailure, CallTimeout) as exc:
            self.breaker.record_failure()
            verdict_given = True
            if isinstance(exc, CallTimeout):
                raise CallTimeout(f"AutoCoder did not answer {name} within {self.timeout_s:g} s") from exc
            if exc.may_have_reached and not self.is_idempotent(name, arguments):
                raise Unavailable(
                    f"the connection to AutoCoder was lost during {name}; it may or may not "
                    f"have run, check before retrying ({exc})"
                ) from exc
            raise Unavailable(f"AutoCoder is unreachable: {exc}") from exc
        finally:
            if not verdict_given:
                # Success, a tool error or a protocol error: AutoCoder answered. A cancelled
                # call says nothing about AutoCoder, and must not hold the half-open probe slot.
                self.breaker.release()
        self.breaker.record_success()
        return outcome

    async def _attempts(self, name: str, arguments: dict[str, Any], caller: str) -> ToolOutcome:
        started = time.monotonic()
        attempt = 0
        while True:
            try:
                result = await self._attempt(name, arguments, caller)
            except ProtocolError as exc:
                return ToolOutcome(None, True, str(exc))
            except TransportFailure as exc:
                retryable = not exc.may_have_reached or self.is_idempotent(name, arguments)
                delay = self.backoff_base_s * 2**attempt * (0.5 + random.random() / 2)
                out_of_budget = time.monotonic() - started + delay > self.retry_budget_s
                if not retryable or attempt >= self.retries or out_of_budget:
                    raise
                attempt += 1
                log.info("retrying tool call", extra={"tool": name, "attempt": attempt, "reason": str(exc)})
                await asyncio.sleep(delay)
                continue
            return outcome_of(result)

    async def _attempt(self, name: str, arguments: dict[str, Any], caller: str) -> mcp_types.CallToolResult:
        """One request to AutoCoder, as a CLIENT span whose context goes along in the request's
        `_meta.traceparent` (and from there in its HTTP header: see mcp_session)."""
        with tracing.span(
            f"tools/call {name}",
            kind=SpanKind.CLIENT,
            attributes={"mcp.method.name": "tools/call", "gen_ai.tool.name": name},
        ) as span:
            meta = {"caller": caller}
            carried = tracing.traceparent()
            if carried:
                meta[tracing.TRACEPARENT] = carried
            try:
                result = await self.session.call_tool(name, arguments, meta, self.timeout_s)
            except (TransportFailure, CallTimeout, ProtocolError) as exc:
                tracing.fail(span, type(exc).__name__)
                raise
            if result.isError:
                span.set_attribute("error.type", "tool_error")
                tracing.fail(span, "tool_error")
            return result


__all__ = ["BreakerOpen", "CallTimeout", "ToolCaller", "ToolOutcome", "Unavailable"]
