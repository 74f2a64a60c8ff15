"""How long to wait before retrying Twilio: exponential backoff with full jitter, and never
less than what Twilio asked for in a Retry-After header."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


def backoff_delay(
    attempt: int,
    base_s: float,
    cap_s: float,
    retry_after_s: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """The delay before attempt `attempt + 1`, after `attempt` (>= 1) failed tries.

    Full jitter (uniform in [0, min(cap, base * 2**(attempt-1))]) spreads retries of many
    messages that failed together, so they do not hit Twilio again in lockstep. Retry-After is
    a floor: Twilio said when it will take more, earlier tries only burn attempts.
    """
    ceiling = min(cap_s, base_s * (2 ** max(0, attempt - 1)))
    delay = (rng or random).uniform(0, ceiling)
    if retry_after_s is not None:
        delay = max(delay, retry_after_s)
    return delay


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After as seconds: either delta-seconds or an HTTP date (RFC 9110)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
