"""Prometheus metrics of the reference AutoCoder (scraped at /metrics on its ops port, 9104 in
`make run`): how its sessions and each of its agents (planner, developer, tester, ...) fare.
Labels are small fixed sets: agent names and outcomes, never a project, session or caller."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram
from wacoder.metrics import from_zero

from autocoder.agents.builtin import GENERATORS

AGENT_RUNS = Counter(
    "autocoder_agent_runs_total",
    "Agent runs within coding sessions, by agent and how they ended",
    ["agent", "status"],  # status: done, failed (an error, or the tester's tests did not pass)
)
AGENT_RUN_SECONDS = Histogram(
    "autocoder_agent_run_seconds",
    "Time one agent took within a session (the tester's includes the sandboxed test run)",
    ["agent"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0),
)
SESSIONS_FINISHED = Counter(
    "autocoder_sessions_finished_total", "Coding sessions that ended, by outcome", ["status"]
)
SESSION_SECONDS = Histogram(
    "autocoder_session_seconds",
    "Duration of a coding session, from its start (the project's lock taken) to its end, by outcome",
    ["status"],
    buckets=(0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0),
)
SESSIONS_RUNNING = Gauge("autocoder_sessions_running", "Coding sessions running now")

from_zero(AGENT_RUNS, *((agent, status) for agent in GENERATORS for status in ("done", "failed")))
from_zero(AGENT_RUN_SECONDS, *GENERATORS)
from_zero(SESSIONS_FINISHED, "succeeded", "failed", "cancelled")
from_zero(SESSION_SECONDS, "succeeded", "failed", "cancelled")
