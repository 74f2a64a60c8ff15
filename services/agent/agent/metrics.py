"""Prometheus metrics of the agent (scraped at /metrics on its ops port, 9101 in `make run`).
Labels are small fixed sets: never a phone number, hash, project or session id."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from wacoder import keys
from wacoder.metrics import from_zero
from wacoder.redis import Store

MESSAGES_PROCESSED = Counter(
    "wacoder_agent_messages_processed_total", "Inbound messages answered (the reply handed to the notifier)"
)
PROCESSING_SECONDS = Histogram(
    "wacoder_agent_processing_seconds",
    "Time from taking a message out of the inbox to handing its reply to the notifier",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
END_TO_END_SECONDS = Histogram(
    "wacoder_agent_end_to_end_seconds",
    "Time from the webhook accepting a message (its inbox entry) to its reply queued at the notifier",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0),
)
ERRORS = Counter(
    "wacoder_agent_errors_total",
    "Messages answered with an error instead of what was asked, by type",
    ["type"],
)
from_zero(ERRORS, "autocoder_unavailable", "tool_error", "internal", "llm_unavailable")
REPLIES = Counter(
    "wacoder_agent_replies_total",
    "Replies computed, by what they answered",
    ["kind"],  # empty: a message without text
)
from_zero(REPLIES, "command", "free_text", "empty")
LLM_SECONDS = Histogram(
    "wacoder_agent_llm_seconds",
    "Time of one LLM agent run (model calls and the tools it called), by outcome",
    ["outcome"],
    buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0),
)
from_zero(LLM_SECONDS, "ok", "error")
LLM_TOKENS = Counter(
    "wacoder_agent_llm_tokens_total", "LLM tokens used, as the model reported them", ["type"]
)
PROGRESS_MESSAGES = Counter(
    "wacoder_agent_progress_messages_total",
    "Coding-session progress messages sent",
    ["kind"],  # update (a batch of agent steps), final (the summary, or a notice the relay gave up)
)
from_zero(PROGRESS_MESSAGES, "update", "final")
SESSIONS_STARTED = Counter("wacoder_agent_sessions_started_total", "Coding sessions started")
# How a session can end (AutoCoder's terminal statuses); anything else is counted as "other".
SESSION_OUTCOMES = ("succeeded", "failed", "cancelled")
SESSIONS_COMPLETED = Counter(
    "wacoder_agent_sessions_completed_total",
    "Coding sessions whose end the agent relayed, by outcome",
    ["outcome"],
)
from_zero(SESSIONS_COMPLETED, *SESSION_OUTCOMES, "other")
SESSION_SECONDS = Histogram(
    "wacoder_agent_session_seconds",
    "Duration of a coding session, from its start to the end the agent relayed, by outcome",
    ["outcome"],
    buckets=(1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0),
)


def outcome_label(status: str) -> str:
    return status if status in SESSION_OUTCOMES else "other"


ACTIVE_USERS = Gauge(
    "wacoder_agent_active_users",
    "Distinct users whose messages were processed within the window (every replica's, from Redis)",
    ["window"],  # 15m, 1h, 24h
)
# Users seen, in HyperLogLogs of 5-minute buckets (one slot: counted together; no number in
# clear: the members are the keyed hashes, and a HyperLogLog does not give them back).
ACTIVE_BUCKET_S = 300
ACTIVE_WINDOWS = {"15m": 3, "1h": 12, "24h": 288}


class _ActiveUsers:
    """The users seen since the last write, added to Redis at most once a second (and before
    every scrape) in one PFADD: one call per message would cost more than the rest of the
    metrics together."""

    FLUSH_S = 1.0

    def __init__(self) -> None:
        self.pending: set[str] = set()
        self.flushed_at = 0.0

    async def note(self, redis: Store, user: str) -> None:
        self.pending.add(user)
        if time.monotonic() - self.flushed_at >= self.FLUSH_S:
            await self.flush(redis)

    async def flush(self, redis: Store) -> None:
        self.flushed_at = time.monotonic()
        if not self.pending:
            return
        users, self.pending = self.pending, set()
        key = keys.active_users(int(time.time() // ACTIVE_BUCKET_S))
        try:
            async with redis.pipeline(transaction=False) as pipe:
                pipe.pfadd(key, *users)
                pipe.expire(key, keys.ACTIVE_USERS_TTL_S)
                await pipe.execute()
        except BaseException:
            self.pending |= users  # counted at the next flush instead
            raise


_active_users = _ActiveUsers()


async def note_active(redis: Store, user: str) -> None:
    """Counts `user` (their hash) as active now."""
    await _active_users.note(redis, user)


async def refresh_active_users(redis: Store) -> None:
    await _active_users.flush(redis)
    now = int(time.time() // ACTIVE_BUCKET_S)
    async with redis.pipeline(transaction=False) as pipe:
        for buckets in ACTIVE_WINDOWS.values():
            pipe.pfcount(*(keys.active_users(now - n) for n in range(buckets)))
        counts = await pipe.execute()
    for window, count in zip(ACTIVE_WINDOWS, counts, strict=True):
        ACTIVE_USERS.labels(window).set(count)


INBOX_DEPTH = Gauge(
    "wacoder_agent_inbox_depth",
    "Inbox entries not yet handled (undelivered or pending), per shard",
    ["shard"],
)
INBOX_OLDEST_AGE = Gauge(
    "wacoder_agent_inbox_oldest_age_seconds",
    "Age of the oldest inbox entry not yet handled, per shard (0 when none)",
    ["shard"],
)


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _group(info: Any) -> dict[str, Any] | None:
    """The agent's consumer group among a stream's XINFO GROUPS (None: no stream or group yet)."""
    if not isinstance(info, list):
        return None
    for group in info:
        fields = {_text(k): v for k, v in group.items()}
        if _text(fields.get("name", "")) == keys.INBOX_GROUP:
            return fields
    return None


# Redis before 7 reports no lag: the entries not yet delivered are then counted by reading
# them, at most this many (the gauge shows this cap when more are waiting).
UNREPORTED_LAG_CAP = 1000


async def refresh_inbox(redis: Store) -> None:
    """Depth and oldest-entry age of every inbox shard, on scrape. Handled entries stay in the
    stream a while (acknowledged, not deleted), so the depth is the agent group's lag (not yet
    delivered) plus its pending entries (delivered, not acknowledged); the oldest of them is the
    oldest pending one, else the first one after the last delivered."""
    shards = range(keys.SHARDS)
    async with redis.pipeline(transaction=False) as pipe:
        for shard in shards:
            pipe.xinfo_groups(keys.inbox_stream(shard))
        infos = await pipe.execute(raise_on_error=False)
    groups = {shard: group for shard, info in zip(shards, infos, strict=True) if (group := _group(info))}
    async with redis.pipeline(transaction=False) as pipe:
        for shard, group in groups.items():
            stream = keys.inbox_stream(shard)
            pipe.xpending(stream, keys.INBOX_GROUP)
            after = _text(group.get("last-delivered-id", "0-0"))
            lag_known = group.get("lag") is not None
            pipe.xrange(stream, min=f"({after}", count=1 if lag_known else UNREPORTED_LAG_CAP)
        answers = iter(await pipe.execute(raise_on_error=False))
    now_ms = time.time() * 1000
    for shard in shards:
        depth, age = 0, 0.0
        if (group := groups.get(shard)) is not None:
            summary, undelivered = next(answers), next(answers)
            undelivered = undelivered if isinstance(undelivered, list) else []
            pending = int(group.get("pending") or 0)
            lag = group.get("lag")
            depth = pending + (int(lag) if lag is not None else len(undelivered))
            first: Any = None
            if pending > 0 and isinstance(summary, dict):
                first = summary.get("min")
            elif undelivered:
                first = undelivered[0][0]
            if first is not None:
                age = max(0.0, (now_ms - int(_text(first).split("-")[0])) / 1000)
        INBOX_DEPTH.labels(str(shard)).set(depth)
        INBOX_OLDEST_AGE.labels(str(shard)).set(age)
