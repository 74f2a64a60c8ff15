"""Prometheus metrics of the notifier (scraped at /metrics on its ops port, 9103 in `make run`).
Labels are small fixed sets (an HTTP status, a Twilio error code, a shard number): never a phone
number, hash or message id."""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge, Histogram
from wacoder import keys
from wacoder.metrics import from_zero
from wacoder.redis import Store

TWILIO_SENDS = Counter(
    "wacoder_notifier_twilio_sends_total",
    "Send attempts to Twilio's Messages API by result",
    # status: accepted, an HTTP status (429, 500, 400...) or no_answer; error_code: Twilio's code or ""
    ["status", "error_code"],
)
from_zero(TWILIO_SENDS, ("accepted", ""))
DEAD_LETTERS = Counter(
    "wacoder_notifier_dead_letters_total",
    "Outbox entries given up on",
    ["reason"],
)
from_zero(DEAD_LETTERS, "permanent", "max_attempts", "undecryptable")
PARKED = Counter(
    "wacoder_notifier_parked_total", "Messages parked because the recipient is outside the 24-hour window"
)
DUPLICATES = Counter(
    "wacoder_notifier_duplicates_dropped_total", "Send requests dropped as repeats of an idempotency key"
)
QUEUED = Counter(
    "wacoder_notifier_queued_total", "Send requests queued in the outbox (one per message, not part)"
)
END_TO_END_SECONDS = Histogram(
    "wacoder_notifier_end_to_end_seconds",
    "From the webhook accepting an inbound message to Twilio accepting its reply (its last part); "
    "replies only, not progress messages",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0),
)
OUTBOX_DEPTH = Gauge("wacoder_notifier_outbox_depth", "Outbox entries not yet sent, per shard", ["shard"])
OUTBOX_OLDEST_AGE = Gauge(
    "wacoder_notifier_outbox_oldest_age_seconds",
    "Age of the oldest outbox entry not yet sent, per shard (0 when empty)",
    ["shard"],
)


def status_labels(status: int | None, error_code: int | None, accepted: bool) -> tuple[str, str]:
    if accepted:
        return "accepted", ""
    code = str(error_code) if error_code is not None and 0 < error_code < 1_000_000 else ""
    return (str(status) if status is not None and 100 <= status < 600 else "no_answer"), code


async def refresh_outbox(redis: Store) -> None:
    """Depth and oldest-entry age of every outbox shard (finished entries are deleted from their
    stream, so its length is what is left to send): two reads per shard, on scrape."""
    shards = range(keys.SHARDS)
    async with redis.pipeline(transaction=False) as pipe:
        for shard in shards:
            pipe.xlen(keys.outbox_stream(shard))
            pipe.xrange(keys.outbox_stream(shard), count=1)
        answers = await pipe.execute()
    now_ms = time.time() * 1000
    for shard in shards:
        depth, first = answers[2 * shard], answers[2 * shard + 1]
        OUTBOX_DEPTH.labels(str(shard)).set(depth)
        age = 0.0
        if first:
            entry_id = first[0][0]
            entry_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            age = max(0.0, (now_ms - int(entry_id.split("-")[0])) / 1000)
        OUTBOX_OLDEST_AGE.labels(str(shard)).set(age)
