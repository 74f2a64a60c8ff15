"""Prometheus metrics of the agent (scraped at /metrics on its ops port, 9101 in `make run`).
Labels are small fixed sets: never a phone number, hash, project or session id."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

MESSAGES_PROCESSED = Counter(
    "wacoder_agent_messages_processed_total", "Inbound messages answered (the reply handed to the notifier)"
)
PROCESSING_SECONDS = Histogram(
    "wacoder_agent_processing_seconds",
    "Time from taking a message out of the inbox to handing its reply to the notifier",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
REPLIES = Counter(
    "wacoder_agent_replies_total",
    "Replies computed, by what they answered",
    ["kind"],  # command, free_text, empty (a message without text)
)
LLM_SECONDS = Histogram(
    "wacoder_agent_llm_seconds",
    "Time of one LLM agent run (model calls and the tools it called), by outcome",
    ["outcome"],  # ok, error
    buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0),
)
LLM_TOKENS = Counter(
    "wacoder_agent_llm_tokens_total", "LLM tokens used, as the model reported them", ["type"]
)
PROGRESS_MESSAGES = Counter(
    "wacoder_agent_progress_messages_total",
    "Coding-session progress messages sent",
    ["kind"],  # update (a batch of agent steps), final (the summary, or a notice the relay gave up)
)
SESSIONS_STARTED = Counter("wacoder_agent_sessions_started_total", "Coding sessions started")
SESSIONS_COMPLETED = Counter(
    "wacoder_agent_sessions_completed_total",
    "Coding sessions whose end the agent relayed, by outcome",
    ["outcome"],  # succeeded, failed, other
)
SESSION_SECONDS = Histogram(
    "wacoder_agent_session_seconds",
    "Duration of a coding session, from its start to the end the agent relayed, by outcome",
    ["outcome"],
    buckets=(1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0),
)


def outcome_label(status: str) -> str:
    return status if status in ("succeeded", "failed") else "other"
