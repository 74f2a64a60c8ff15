"""The bridge's settings: the shared Settings plus a few knobs only the bridge reads."""

from __future__ import annotations

from wacoder.settings import Settings


class BridgeSettings(Settings):
    # Establishing the MCP session (TCP connect + initialize): short, so that an AutoCoder
    # that is down turns into UNAVAILABLE in seconds, not after the 30 s call timeout.
    mcp_connect_timeout_s: float = 3.0
    # A call stops retrying once this much time has gone by since it began.
    mcp_retry_budget_s: float = 5.0
    mcp_backoff_base_s: float = 0.2
    # WatchSession: how often it polls, and how long AutoCoder may stay unreachable before
    # the stream ends with UNAVAILABLE (the client resumes later with after_event).
    watch_poll_interval_s: float = 0.5
    watch_max_outage_s: float = 30.0
