"""The outbox worker: reads the outbox stream as one consumer of the notifier group and sends
every entry through Twilio, one recipient at a time, many recipients at once.

Order and durability:
- A lane per recipient (their phone hash) sends that recipient's entries strictly one after
  the other, in the order this process read them; lanes run in parallel.
- On start the consumer first re-reads its own pending entries (it keeps its name across
  restarts, see `consumer_name`), then periodically claims entries that another consumer
  left idle for longer than STREAM_CLAIM_IDLE_MS (XAUTOCLAIM), then reads new ones.
- While an entry waits in a lane or in a backoff, its idle time is refreshed (XCLAIM to
  ourselves) so that a healthy but patient replica is not mistaken for a dead one.
- An entry is acknowledged only when Twilio accepted it, it was dead-lettered, or parked.
- Redis outages are survived: every loop logs, backs off and tries again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError
from wacoder import keys
from wacoder.crypto import InvalidToken
from wacoder.settings import Settings

from notifier.backoff import backoff_delay
from notifier.outbox import Outbox, OutboxEntry
from notifier.rate_limit import SendRateLimiter
from notifier.twilio_sender import SendOutcome, TwilioSender

log = logging.getLogger("notifier.worker")

READ_COUNT = 100
# Entries held in memory at most (in lanes); beyond that the stream is the queue.
MAX_IN_MEMORY = 2000
REDIS_RETRY_MAX_S = 5.0


def consumer_name(settings: Settings) -> str:
    """Stable across restarts of the same replica, distinct between replicas.

    NOTIFIER_CONSUMER wins; otherwise hostname (the pod name in Kubernetes) plus the gRPC
    port, so two notifiers on one machine never share a name (they cannot share a port).
    """
    explicit = os.environ.get("NOTIFIER_CONSUMER")
    if explicit:
        return explicit
    port = settings.notifier_addr.rpartition(":")[2]
    return f"{socket.gethostname()}:{port}"


@dataclass
class _Lane:
    entries: deque[OutboxEntry] = field(default_factory=deque)
    task: asyncio.Task[None] | None = None


class OutboxWorker:
    def __init__(
        self,
        redis: aioredis.Redis,
        outbox: Outbox,
        sender: TwilioSender,
        limiter: SendRateLimiter,
        settings: Settings,
    ) -> None:
        self.redis = redis
        self.outbox = outbox
        self.sender = sender
        self.limiter = limiter
        self.settings = settings
        self.consumer = consumer_name(settings)
        self.claim_idle_ms = settings.stream_claim_idle_ms
        self.stopping = asyncio.Event()
        self._lanes: dict[str, _Lane] = {}
        self._held: set[str] = set()  # ids in lanes, not yet acknowledged
        self._rng = random.Random()

    # ---- reading ----------------------------------------------------------------------

    async def run(self) -> None:
        """Runs until `stop()`; never raises for Redis trouble."""
        delay = 0.2
        while not self.stopping.is_set():
            try:
                await self._ensure_group()
                await self._resume_own()
                await self._consume()
            except (RedisError, OSError) as exc:
                log.warning(
                    "outbox read failed; retrying",
                    extra={"error": type(exc).__name__, "retry_in_s": round(delay, 2)},
                )
                await self._sleep(delay)
                delay = min(REDIS_RETRY_MAX_S, delay * 2)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox worker loop crashed; restarting it")
                await self._sleep(1.0)

    async def _ensure_group(self) -> None:
        try:
            # From "0": entries queued before the group existed are still ours to send.
            await self.redis.xgroup_create(keys.OUTBOX_STREAM, keys.OUTBOX_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _resume_own(self) -> None:
        """Entries delivered to this consumer name before a crash or restart, in order."""
        last = "0"
        while not self.stopping.is_set():
            reply = await self.redis.xreadgroup(
                keys.OUTBOX_GROUP, self.consumer, {keys.OUTBOX_STREAM: last}, count=READ_COUNT
            )
            entries = reply[0][1] if reply else []
            if not entries:
                return
            for entry_id, fields in entries:
                await self._dispatch(entry_id, fields)
                last = entry_id

    async def _consume(self) -> None:
        next_claim = 0.0
        next_refresh = time.monotonic() + self.claim_idle_ms / 3000
        while not self.stopping.is_set():
            now = time.monotonic()
            if now >= next_claim:
                await self._claim_abandoned()
                next_claim = now + max(0.5, self.claim_idle_ms / 2000)
            if now >= next_refresh:
                await self._refresh_held()
                next_refresh = now + max(0.5, self.claim_idle_ms / 3000)
            room = MAX_IN_MEMORY - len(self._held)
            if room <= 0:
                await self._sleep(0.1)
                continue
            reply = await self.redis.xreadgroup(
                keys.OUTBOX_GROUP,
                self.consumer,
                {keys.OUTBOX_STREAM: ">"},
                count=min(READ_COUNT, room),
                block=500,
            )
            for _stream, entries in reply or []:
                for entry_id, fields in entries:
                    await self._dispatch(entry_id, fields)

    async def _claim_abandoned(self) -> None:
        start = "0-0"
        while not self.stopping.is_set():
            reply = await self.redis.xautoclaim(
                keys.OUTBOX_STREAM,
                keys.OUTBOX_GROUP,
                self.consumer,
                min_idle_time=self.claim_idle_ms,
                start_id=start,
                count=READ_COUNT,
            )
            start, claimed = reply[0], reply[1]
            for entry_id, fields in claimed:
                log.info("claimed an abandoned outbox entry", extra={"outbox_id": entry_id})
                await self._dispatch(entry_id, fields)
            if start in ("0-0", b"0-0"):
                return

    async def _refresh_held(self) -> None:
        """Resets the idle time of everything we hold, so nobody claims it from us."""
        if not self._held:
            return
        ids = list(self._held)
        for i in range(0, len(ids), 500):
            await self.redis.xclaim(
                keys.OUTBOX_STREAM,
                keys.OUTBOX_GROUP,
                self.consumer,
                min_idle_time=0,
                message_ids=ids[i : i + 500],
                justid=True,
            )

    async def _dispatch(self, entry_id: str, fields: dict[str, str] | None) -> None:
        if entry_id in self._held:
            return
        if not fields:
            # Deleted while pending (finished by a consumer we had claimed it from).
            await self.redis.xack(keys.OUTBOX_STREAM, keys.OUTBOX_GROUP, entry_id)
            return
        entry = OutboxEntry(entry_id, dict(fields))
        self._held.add(entry_id)
        lane = self._lanes.setdefault(entry.to_hash, _Lane())
        lane.entries.append(entry)
        if lane.task is None or lane.task.done():
            lane.task = asyncio.create_task(self._run_lane(entry.to_hash, lane))

    # ---- sending ----------------------------------------------------------------------

    async def _run_lane(self, to_hash: str, lane: _Lane) -> None:
        try:
            while lane.entries and not self.stopping.is_set():
                entry = lane.entries[0]
                try:
                    done = await self._process(entry)
                except Exception:
                    # A bug must not strand the recipient's queue until the next restart.
                    log.exception(
                        "sending an outbox entry crashed; retrying it", extra={"outbox_id": entry.id}
                    )
                    await self._sleep(1.0)
                    continue
                if not done:
                    return  # stopping: the rest stays pending in the stream for the next start
                lane.entries.popleft()
                self._held.discard(entry.id)
        finally:
            if not lane.entries and self._lanes.get(to_hash) is lane:
                del self._lanes[to_hash]

    async def _process(self, entry: OutboxEntry) -> bool:
        """Sends one entry to a final state. False when stopping interrupted it (still pending)."""
        attempts = 0
        last: SendOutcome | None = None
        redis_delay = 0.2
        while not self.stopping.is_set():
            try:
                message = self.outbox.decrypt(entry)
            except (InvalidToken, KeyError, ValueError) as exc:
                why = {"reason": "undecryptable", "error": type(exc).__name__, "attempts": "0"}
                return await self._finish(partial(self.outbox.dead_letter, entry, why))
            try:
                # Another consumer may have sent it while we thought it was ours (see sent_marker).
                if await self.outbox.already_sent(entry):
                    return await self._finish(partial(self.outbox.ack, entry))
                await self.limiter.acquire()
            except (RedisError, OSError) as exc:
                log.warning("redis unavailable before a send; waiting", extra={"error": type(exc).__name__})
                if not await self._sleep(redis_delay):
                    return False
                redis_delay = min(REDIS_RETRY_MAX_S, redis_delay * 2)
                continue
            if self.stopping.is_set():
                return False
            attempts += 1
            last = await self.sender.send(message.to, message.body, message.media_urls)
            if last.sid is not None:
                log.info(
                    "sent",
                    extra={
                        "phone": message.to,
                        "outbox_id": entry.id,
                        "twilio_sid": last.sid,
                        "attempts": attempts,
                    },
                )
                # Twilio has it: from here on, only recording is left, never a second send.
                return await self._finish(partial(self.outbox.mark_accepted, entry, last.sid), must=True)
            if last.outside_window:
                log.info(
                    "recipient outside the 24h window; parked",
                    extra={"phone": message.to, "outbox_id": entry.id},
                )
                return await self._finish(partial(self.outbox.park, entry))
            if not last.retryable or attempts >= self.settings.notifier_max_attempts:
                reason = "permanent" if not last.retryable else "max_attempts"
                log.warning(
                    "dead-lettered",
                    extra={
                        "phone": message.to,
                        "outbox_id": entry.id,
                        "reason": reason,
                        "status": last.status,
                        "error_code": last.error_code,
                        "attempts": attempts,
                    },
                )
                record = {
                    "reason": reason,
                    "status": str(last.status or ""),
                    "error_code": str(last.error_code or ""),
                    "error": last.detail,
                    "attempts": str(attempts),
                }
                return await self._finish(partial(self.outbox.dead_letter, entry, record))
            delay = backoff_delay(
                attempts,
                self.settings.notifier_backoff_base_s,
                self.settings.notifier_backoff_max_s,
                last.retry_after_s,
                self._rng,
            )
            log.info(
                "send failed; retrying",
                extra={
                    "outbox_id": entry.id,
                    "status": last.status,
                    "error_code": last.error_code,
                    "attempts": attempts,
                    "retry_in_s": round(delay, 3),
                },
            )
            if not await self._sleep(delay):
                return False
        return False

    async def _finish(self, write: Callable[[], Awaitable[None]], *, must: bool = False) -> bool:
        """Runs a final outbox write, retrying through Redis outages.

        `must`: the message is already at Twilio; keep trying even while stopping, because
        giving up here means a second send after the restart.
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
        try:
            await asyncio.wait_for(self.stopping.wait(), timeout=seconds)
        except TimeoutError:
            return True
        return False

    # ---- shutdown ---------------------------------------------------------------------

    async def stop(self, grace_s: float = 8.0) -> None:
        """Stops reading; lets sends already at Twilio finish and be recorded; the rest stays
        pending under our consumer name, resumed on the next start (or claimed by a peer)."""
        self.stopping.set()
        tasks = [lane.task for lane in self._lanes.values() if lane.task is not None and not lane.task.done()]
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
