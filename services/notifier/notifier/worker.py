"""The outbox worker: sends every outbox entry through Twilio to a final state.

The stream mechanics (consumer group, a lane per recipient so that their entries go one at a
time in order, taking over a shard's pending entries, surviving Redis outages, graceful stop)
are `wacoder.streams`, shared with the agent's inbox; which outbox shards this replica works
on is `wacoder.leases` (wired in main). This module is only the sending policy for one entry:
- attempts with exponential backoff and jitter on 429/5xx/no answer, Retry-After honoured;
- the shared per-sender rate limit;
- 63016 (outside the 24-hour window): parked; any other 4xx or too many attempts: dead letter;
- every final state is one atomic write that also acknowledges (XACK + XDEL) the entry, so the
  handler tells the consumer `Outcome.ACKNOWLEDGED`;
- reconciliation: before each POST an in-flight marker is written; when an entry that has one
  is handled again (after a crash or by a peer) or our last request got no clear answer, we
  first ask Twilio's Messages list whether the message is already there, and record that
  instead of sending it twice.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

from opentelemetry.trace import SpanKind
from redis.exceptions import RedisError
from wacoder import keys, probe, tracing
from wacoder.crypto import InvalidToken
from wacoder.redis import Store
from wacoder.settings import Settings
from wacoder.streams import KeyedStreamConsumer, Outcome, ShardConsumers
from wacoder.waiting import wait_event

from notifier import metrics
from notifier.backoff import backoff_delay
from notifier.outbox import Message, Outbox, OutboxEntry, PriorState
from notifier.rate_limit import SendRateLimiter
from notifier.twilio_sender import SendOutcome, TwilioSender

log = logging.getLogger("notifier.worker")

# Entries held in memory at most per shard (in lanes); beyond that the stream is the queue.
MAX_IN_MEMORY = 500
REDIS_RETRY_MAX_S = 5.0
# SIGTERM: how long sends already on the wire get to finish and be recorded.
STOP_GRACE_S = 8.0


@dataclass(frozen=True)
class _Reconciled:
    """The answer of a reconciliation: Twilio has the message (`sid`), could not be asked
    (`error`, counts as a failed attempt), stop interrupted the wait, or none: send it."""

    sid: str | None = None
    error: SendOutcome | None = None
    interrupted: bool = False


class OutboxWorker:
    def __init__(
        self,
        redis: Store,
        outbox: Outbox,
        sender: TwilioSender,
        limiter: SendRateLimiter,
        settings: Settings,
        *,
        consumer: str,
    ) -> None:
        self.redis = redis
        self.outbox = outbox
        self.sender = sender
        self.limiter = limiter
        self.settings = settings
        self.consumer = consumer
        # Set when the process stops: retries and backoffs end, the entry stays pending.
        self.stopping = asyncio.Event()
        # The owned shards' consumers; the shard leases start and stop them.
        self.shards = ShardConsumers(self._consumer_for, drain_s=STOP_GRACE_S)
        self._rng = random.Random()

    def _consumer_for(self, shard: int) -> KeyedStreamConsumer:
        return KeyedStreamConsumer(
            self.redis,
            stream=keys.outbox_stream(shard),
            group=keys.OUTBOX_GROUP,
            consumer=self.consumer,
            key_of=lambda fields: fields.get("to_hash", ""),
            handle=self._handle,
            claim_idle_ms=self.settings.stream_claim_idle_ms,
            max_in_flight=MAX_IN_MEMORY,
            take_over=True,
        )

    async def _handle(self, entry_id: str, fields: dict[str, str]) -> Outcome:
        entry = OutboxEntry(entry_id, dict(fields))
        # A span per send, continuing the trace the entry carries (the agent's reply, through
        # Send); the Twilio requests are its children.
        with tracing.span(
            "notifier: send",
            kind=SpanKind.CONSUMER,
            parent=entry.fields.get(tracing.TRACEPARENT),
            attributes={
                "messaging.system": "redis",
                "messaging.message.id": entry_id,
                "wacoder.part": entry.fields.get("part", ""),
            },
        ):
            finished = await self._process(entry)
        # Every final write acknowledged the entry itself, atomically with its record.
        return Outcome.ACKNOWLEDGED if finished else Outcome.KEEP_PENDING

    @staticmethod
    def _accepted(entry: OutboxEntry) -> None:
        """Twilio has the entry: a reply's last part ends the way from the webhook to Twilio."""
        accepted_at_ms = entry.accepted_at_ms
        if accepted_at_ms is not None and entry.last_part:
            metrics.END_TO_END_SECONDS.observe(max(0.0, time.time() - accepted_at_ms / 1000))

    async def _process(self, entry: OutboxEntry) -> bool:
        """Sends one entry to a final state. False when stopping interrupted it (still pending)."""
        try:
            message = self.outbox.decrypt(entry)
        except (InvalidToken, KeyError, ValueError) as exc:
            why = {"reason": "undecryptable", "error": type(exc).__name__, "attempts": "0"}
            metrics.DEAD_LETTERS.labels("undecryptable").inc()
            return await self._finish(partial(self.outbox.dead_letter, entry, why))
        if probe.is_probe(message.to):  # the operator's probe: kept for it, nobody texted
            return await self._finish(partial(self.outbox.hold_probe_reply, entry, message))
        attempts = 0
        # An in-flight marker seen on the first look predates this process's hold on the entry
        # (we crashed, or a peer died mid-send): a request may be at Twilio.
        first_look = True
        # Our own last request may have reached Twilio without us learning its sid.
        unanswered = False
        redis_delay = 0.2
        while not self.stopping.is_set():
            outcome: SendOutcome | None = None
            try:
                prior = await self.outbox.prior_state(entry)
                if prior.sent:  # a peer that claimed the entry meanwhile got it accepted
                    return await self._finish(partial(self.outbox.ack, entry))
                if prior.attempted and (first_look or unanswered):
                    found = await self._reconcile(entry, message, prior, settle=first_look)
                    if found.interrupted:
                        return False
                    if found.sid is not None:
                        finished = await self._finish(
                            partial(self.outbox.mark_accepted, entry, found.sid), must=True
                        )
                        self._accepted(entry)
                        return finished
                    outcome = found.error  # None: Twilio does not have it, send it now
                first_look = False
                if outcome is None:
                    await self.limiter.acquire()
                    if self.stopping.is_set():
                        return False
                    await self.outbox.mark_in_flight(entry)
            except (RedisError, OSError) as exc:
                log.warning("redis unavailable before a send; waiting", extra={"error": type(exc).__name__})
                if not await self._sleep(redis_delay):
                    return False
                redis_delay = min(REDIS_RETRY_MAX_S, redis_delay * 2)
                continue
            attempts += 1
            if outcome is None:
                outcome = await self.sender.send(message.to, message.body, message.media_urls)
                metrics.TWILIO_SENDS.labels(
                    *metrics.status_labels(outcome.status, outcome.error_code, outcome.accepted)
                ).inc()
                unanswered = outcome.may_have_reached_twilio
            else:
                unanswered = True  # still unknown whether an earlier request got there
            if outcome.sid is not None:
                log.info(
                    "sent",
                    extra={
                        "phone": message.to,
                        "outbox_id": entry.id,
                        "twilio_sid": outcome.sid,
                        "attempts": attempts,
                    },
                )
                # Twilio has it: from here on, only recording is left, never a second send.
                finished = await self._finish(
                    partial(self.outbox.mark_accepted, entry, outcome.sid), must=True
                )
                self._accepted(entry)
                return finished
            if outcome.outside_window:
                log.info(
                    "recipient outside the 24h window; parked",
                    extra={"phone": message.to, "outbox_id": entry.id},
                )
                metrics.PARKED.inc()
                return await self._finish(partial(self.outbox.park, entry))
            if not outcome.retryable or attempts >= self.settings.notifier_max_attempts:
                return await self._dead_letter(entry, message, outcome, attempts)
            delay = backoff_delay(
                attempts,
                self.settings.notifier_backoff_base_s,
                self.settings.notifier_backoff_max_s,
                outcome.retry_after_s,
                self._rng,
            )
            log.info(
                "send failed; retrying",
                extra={
                    "outbox_id": entry.id,
                    "status": outcome.status,
                    "error_code": outcome.error_code,
                    "error": outcome.detail,
                    "attempts": attempts,
                    "retry_in_s": round(delay, 3),
                },
            )
            if not await self._sleep(delay):
                return False
        return False

    async def _reconcile(
        self, entry: OutboxEntry, message: Message, prior: PriorState, *, settle: bool
    ) -> _Reconciled:
        """Asks Twilio whether an earlier attempt of this entry got there.

        `settle`: the last request was made by a process that is gone; it may still be on its
        way, so wait until it would have timed out before trusting the list. Raises RedisError.
        """
        assert prior.first_at is not None
        if settle and prior.last_at is not None:
            wait = prior.last_at + self.sender.timeout_s - time.time()
            if wait > 0:
                log.info(
                    "an earlier request may still be on its way to Twilio; waiting before asking",
                    extra={"outbox_id": entry.id, "wait_s": round(wait, 2)},
                )
                if not await self._sleep(wait):
                    return _Reconciled(interrupted=True)
        found = await self.sender.find_accepted(message.to, message.body, prior.first_at)
        if found.error is not None:
            return _Reconciled(error=found.error)
        for sid in found.sids:
            # An identical text to the same user that another entry already recorded is not ours.
            if not await self.outbox.sid_belongs_to_another(sid, entry):
                log.info(
                    "reconciled: Twilio already has this message; recording it, not resending",
                    extra={"phone": message.to, "outbox_id": entry.id, "twilio_sid": sid},
                )
                return _Reconciled(sid=sid)
        return _Reconciled()

    async def _dead_letter(
        self, entry: OutboxEntry, message: Message, outcome: SendOutcome, attempts: int
    ) -> bool:
        reason = "permanent" if not outcome.retryable else "max_attempts"
        metrics.DEAD_LETTERS.labels(reason).inc()
        log.warning(
            "dead-lettered",
            extra={
                "phone": message.to,
                "outbox_id": entry.id,
                "reason": reason,
                "status": outcome.status,
                "error_code": outcome.error_code,
                "attempts": attempts,
            },
        )
        record = {
            "reason": reason,
            "status": str(outcome.status or ""),
            "error_code": str(outcome.error_code or ""),
            "error": outcome.detail,
            "attempts": str(attempts),
        }
        return await self._finish(partial(self.outbox.dead_letter, entry, record))

    async def _finish(self, write: Callable[[], Awaitable[None]], *, must: bool = False) -> bool:
        """Runs a final outbox write, retrying through Redis outages.

        `must`: the message is already at Twilio; keep trying even while stopping, because
        giving up here means a reconciliation (or worse) after the restart.
        """
        delay = 0.2
        while True:
            try:
                await write()
                return True
            except (RedisError, OSError) as exc:
                log.warning(
                    "recording an outbox result failed; retrying", extra={"error": type(exc).__name__}
                )
                if self.stopping.is_set() and not must:
                    return False
                await asyncio.sleep(delay)
                delay = min(REDIS_RETRY_MAX_S, delay * 2)

    async def _sleep(self, seconds: float) -> bool:
        """Sleeps unless stopping; False when woken by `stop()`."""
        return not await wait_event(self.stopping, seconds)
