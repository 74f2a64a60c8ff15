"""The circuit breaker in front of AutoCoder, as an explicit state machine.

    closed --(failure_threshold consecutive failures)--> open
    open --(reset_timeout_s elapsed, next call)--> half_open (that call is the one probe)
    half_open --(probe succeeds)--> closed
    half_open --(probe fails)--> open (the reset timer starts again)

While open, and while a half-open probe is in flight, calls fail fast without touching
AutoCoder: a platform that is down is not helped by every WhatsApp user's retries.
One unit is one logical call (with its own retries), so "5 failures" means five calls
that each gave up, not five TCP attempts.
"""

from __future__ import annotations

import enum
import logging
import math
import time
from collections.abc import Callable

log = logging.getLogger("mcp_bridge.breaker")


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class BreakerOpen(Exception):
    """A call refused without trying, because AutoCoder failed recently."""

    def __init__(self, retry_in_s: float) -> None:
        self.retry_in_s = retry_in_s
        super().__init__(f"AutoCoder is unavailable (circuit open), retry in {math.ceil(retry_in_s)} s")


class CircuitBreaker:
    def __init__(
        self, failure_threshold: int, reset_timeout_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.failure_threshold = max(1, failure_threshold)
        self.reset_timeout_s = reset_timeout_s
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_in_flight = False

    @property
    def state(self) -> BreakerState:
        return self._state

    def acquire(self) -> None:
        """Lets a call through or raises BreakerOpen. A caller that got through must report
        its outcome with record_success() or record_failure() (or release() if it never
        reached the point of testing AutoCoder)."""
        if self._state is BreakerState.OPEN:
            remaining = self._opened_at + self.reset_timeout_s - self._clock()
            if remaining > 0:
                raise BreakerOpen(remaining)
            self._transition(BreakerState.HALF_OPEN)
        if self._state is BreakerState.HALF_OPEN:
            if self._probe_in_flight:
                # One probe at a time; the others wait for its verdict by failing fast.
                raise BreakerOpen(self.reset_timeout_s)
            self._probe_in_flight = True

    def record_success(self) -> None:
        self._probe_in_flight = False
        self._failures = 0
        if self._state is not BreakerState.CLOSED:
            self._transition(BreakerState.CLOSED)

    def record_failure(self) -> None:
        self._probe_in_flight = False
        if self._state is BreakerState.HALF_OPEN:
            self._open()
            return
        self._failures += 1
        if self._state is BreakerState.CLOSED and self._failures >= self.failure_threshold:
            self._open()

    def release(self) -> None:
        """The call ended without a verdict on AutoCoder (e.g. the gRPC client went away)."""
        self._probe_in_flight = False

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._transition(BreakerState.OPEN)

    def _transition(self, new: BreakerState) -> None:
        log.warning(
            "circuit breaker state change",
            extra={"from_state": self._state.value, "to_state": new.value, "failures": self._failures},
        )
        self._state = new
        if new is BreakerState.CLOSED:
            self._failures = 0
