"""Prometheus metrics of the mcp-bridge (scraped at /metrics on its ops port, 9102 in `make run`).
Labels are small fixed sets: a tool is one AutoCoder listed (anything else is "other"), never a
caller hash, project or session id."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from wacoder.metrics import from_zero

from mcp_bridge.cache import CACHEABLE_TOOLS

TOOL_SECONDS = Histogram(
    "wacoder_bridge_tool_seconds",
    "Time of one AutoCoder tool call (with its retries), by tool and outcome",
    ["tool", "outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
BREAKER_STATE = Gauge(
    "wacoder_bridge_breaker_state", "Circuit breaker towards AutoCoder: 0 closed, 1 half-open, 2 open"
)
CACHE = Counter(
    "wacoder_bridge_cache_total", "Cacheable tool calls by cache result", ["tool", "result"]
)  # result: hit, miss

BREAKER_VALUES = {"closed": 0, "half_open": 1, "open": 2}
OUTCOMES = ("ok", "tool_error", "unavailable", "timeout")


def tools_listed(tools: Iterable[Any]) -> None:
    """Exposes every listed tool's series at 0 as soon as AutoCoder lists it (wacoder.metrics.from_zero)."""
    names = [name for tool in tools if isinstance(name := getattr(tool, "name", None), str)]
    from_zero(TOOL_SECONDS, *((name, outcome) for name in names for outcome in OUTCOMES))
    from_zero(
        CACHE, *((name, result) for name in names if name in CACHEABLE_TOOLS for result in ("hit", "miss"))
    )


def tool_label(name: str, listed: Iterable[Any] | None) -> str:
    """`name` when AutoCoder listed a tool of that name, else "other" (a caller cannot make up labels)."""
    return name if any(getattr(tool, "name", None) == name for tool in listed or ()) else "other"
