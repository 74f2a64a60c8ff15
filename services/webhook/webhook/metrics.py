"""Prometheus metrics of the webhook (scraped at GET /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram
from wacoder.metrics import from_zero

REQUESTS = Counter(
    "wacoder_webhook_messages_total",
    "Inbound WhatsApp messages by outcome",
    ["outcome"],
)
from_zero(
    REQUESTS,
    *"accepted duplicate unauthorized rate_limited bad_signature bad_request unavailable".split(),
)
LATENCY = Histogram(
    "wacoder_webhook_latency_seconds",
    "Time to answer Twilio for an inbound message",
    # Up to Twilio's 15 s timeout, so that an alert can see an ack come close to it.
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0),
)
REFUSAL_NOTICES = Counter(
    "wacoder_webhook_refusal_notices_total",
    "Refusals the sender was told about (at most one per window per number)",
    ["reason"],
)
from_zero(REFUSAL_NOTICES, "unauthorized", "rate_limited")
STATUS_CALLBACKS = Counter(
    "wacoder_webhook_status_callbacks_total", "Delivery status callbacks by status", ["status"]
)
from_zero(STATUS_CALLBACKS, "sent", "delivered", "read", "failed", "undelivered")

# Twilio's message statuses; anything else is counted as "other" so that a label never holds
# whatever a request made up.
_STATUSES = frozenset(
    "accepted scheduled queued sending sent delivery_unknown delivered undelivered failed read "
    "receiving received canceled partially_delivered".split()
)


def status_label(status: str) -> str:
    status = status.strip().lower()
    return status if status in _STATUSES else "other"
