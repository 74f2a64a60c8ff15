"""Durable work queues on Redis Streams with consumer groups, as the agent's inbox and the
notifier's outbox use them. One implementation of the mechanics, so that both services get
the same guarantees and the same fixes.

Guarantees, and why:
- An entry is acknowledged only after its handler finished with it: a crash leaves it pending.
  A handler that must acknowledge together with its own writes (one atomic MULTI/Lua) does the
  XACK itself and returns `Outcome.ACKNOWLEDGED`; one that gives up for now (shutdown) returns
  `Outcome.KEEP_PENDING`, and the entry waits for the restart or a peer.
- After a restart a consumer first takes back its own pending entries (same consumer name);
  one that owns its stream exclusively (a shard held through `wacoder.leases`) takes back
  every pending entry at once, whoever held it (`take_over`), in stream order.
- Entries pending on a consumer that went away are claimed after `claim_idle_ms`; a live
  consumer keeps the entries it holds (running or queued in a lane) by refreshing their idle
  time (a heartbeat), so slow work is never handed to a second consumer while the first still
  works on it.
- Entries with the same key (a phone number) are handled one at a time, in stream order;
  different keys run concurrently. At most `max_in_flight` entries are held in memory; beyond
  that the stream itself is the queue.
- A handler that raises is retried in place, with backoff, until it finishes: the rest of its
  lane waits (a sender's later message must not overtake an earlier one), other lanes go on.
  Failures are expected to be transient (a peer or Redis away); a handler turns what can never
  succeed into a final outcome of its own (the notifier's dead letters).
- The stream keeps a recent history for operators: beyond `retain` entries, the consumer trims
  only what the group has acknowledged, so an entry that is still work is never trimmed.
- Redis going away (errors, a restart without persistence that drops the group) is survived:
  the loop backs off, recreates the group and resumes its own pending entries.
- Shutdown: `stop()` stops reading and starting entries; `drain(timeout_s)` lets running
  handlers finish, then cancels what is left. Unfinished entries stay pending.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError, ResponseError

from wacoder.redis import Store
from wacoder.waiting import wait_event

log = logging.getLogger("wacoder.streams")

Fields = dict[str, str]


class Outcome(enum.Enum):
    """What a handler did with its entry (returning None means DONE)."""

    DONE = "done"  # finished; the consumer acknowledges it
    ACKNOWLEDGED = "acknowledged"  # finished and already acknowledged by the handler itself
    KEEP_PENDING = "keep_pending"  # not finished (e.g. stopping): stays pending, nobody acks


Handler = Callable[[str, Fields], Awaitable[Outcome | None]]

READ_COUNT = 100
# XCLAIM takes the ids as arguments; keep each heartbeat command a reasonable size.
HEARTBEAT_BATCH = 500
REDIS_RETRY_MAX_S = 5.0
# Entries trimmed per heartbeat at most: trimming is housekeeping, not a burst of work.
TRIM_BATCH = 1000


class ShardConsumers:
    """The consumers of the shards this replica owns: one `KeyedStreamConsumer` per shard,
    started when its lease is acquired, stopped and drained when it is released (see
    `wacoder.leases`), so a shard's entries are never handled by two replicas at once."""

    def __init__(self, make: Callable[[int], KeyedStreamConsumer], drain_s: float) -> None:
        self.make = make
        self.drain_s = drain_s
        self._running: dict[int, tuple[KeyedStreamConsumer, asyncio.Task[None]]] = {}

    @property
    def shards(self) -> frozenset[int]:
        return frozenset(self._running)

    async def start(self, shard: int) -> None:
        if shard not in self._running:
            consumer = self.make(shard)
            self._running[shard] = (consumer, asyncio.create_task(consumer.run(), name=f"shard-{shard}"))

    async def stop(self, shard: int) -> None:
        """Stops reading the shard, lets running handlers finish (up to `drain_s`), then
        cancels the rest: what did not finish stays pending for the shard's next owner."""
        await self._stop(shard, self.drain_s)

    async def cancel(self, shard: int) -> None:
        """Stops the shard's work at once (its lease was lost: another replica may have it)."""
        await self._stop(shard, 0.0)

    async def _stop(self, shard: int, drain_s: float) -> None:
        running = self._running.pop(shard, None)
        if running is None:
            return
        consumer, task = running
        consumer.stop()
        await consumer.drain(drain_s)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def stop_all(self) -> None:
        await asyncio.gather(*(self.stop(shard) for shard in list(self._running)))


class KeyedStreamConsumer:
    def __init__(
        self,
        redis: Store,
        *,
        stream: str,
        group: str,
        consumer: str,
        key_of: Callable[[Fields], str],
        handle: Handler,
        claim_idle_ms: int = 15_000,
        max_in_flight: int = 256,
        retain: int | None = None,
        retry_base_s: float = 0.2,
        retry_max_s: float = 10.0,
        take_over: bool = False,
    ) -> None:
        self.redis = redis
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.key_of = key_of
        self.handle = handle
        self.claim_idle_ms = claim_idle_ms
        self.max_in_flight = max_in_flight
        self.retain = retain
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        self.take_over = take_over
        # Set by stop(); handlers may wait on it to cut a backoff short (and keep the entry pending).
        self.stopping = asyncio.Event()
        self._queues: dict[str, asyncio.Queue[tuple[str, Fields]]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._in_flight: set[str] = set()  # held: queued in a lane or running, not yet finished
        self._room = asyncio.Event()  # set whenever fewer than max_in_flight entries are held
        self._room.set()

    async def run(self) -> None:
        """Consumes until `stop()`; survives Redis going away and coming back."""
        heartbeat = asyncio.create_task(self._heartbeat())
        backoff = 0.1
        # Own pending entries are taken back once per (re)connection (a handler that failed is
        # retried in place by its lane, so there is nothing else of ours to take back).
        resume_own = True
        # Abandoned entries are looked for every `_block_ms`, not on every read: under load a
        # read returns at once, and the group check and the claim would triple its commands.
        next_claim = 0.0
        try:
            while not self.stopping.is_set():
                try:
                    if resume_own:
                        await self._ensure_group()
                        if self.take_over:
                            await self._claim(min_idle_ms=0)
                        else:
                            await self._drain_own_pending()
                        resume_own = False
                    if time.monotonic() >= next_claim:
                        await self._claim(min_idle_ms=self.claim_idle_ms)
                        next_claim = time.monotonic() + self._block_ms / 1000
                    await self._read_new()
                    backoff = 0.1
                except ResponseError as error:
                    if "NOGROUP" in str(error):
                        # The stream or group vanished (Redis restarted without persistence).
                        resume_own = True
                        continue
                    log.warning(
                        "stream command refused, retrying", extra={"stream": self.stream, "error": str(error)}
                    )
                    await self._pause(backoff)
                    backoff = min(backoff * 2, REDIS_RETRY_MAX_S)
                except (RedisError, OSError) as error:
                    log.warning(
                        "stream read failed, retrying", extra={"stream": self.stream, "error": str(error)}
                    )
                    await self._pause(backoff)
                    backoff = min(backoff * 2, REDIS_RETRY_MAX_S)
                    resume_own = True
                except Exception:
                    # A bug in the loop must not silently end consumption for the process.
                    log.exception(
                        "stream consumer loop crashed; restarting it", extra={"stream": self.stream}
                    )
                    await self._pause(1.0)
                    resume_own = True
        finally:
            heartbeat.cancel()

    def stop(self) -> None:
        """Stops reading and starting entries; running handlers go on (see `drain`)."""
        self.stopping.set()

    async def drain(self, timeout_s: float) -> None:
        """Waits up to `timeout_s` for running handlers, then cancels the rest. Entries that
        did not finish stay pending: resumed on the next start, or claimed by a peer."""
        workers = list(self._workers.values())
        if not workers:
            return
        _done, pending = (
            await asyncio.wait(workers, timeout=timeout_s) if timeout_s > 0 else (set(), set(workers))
        )
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _pause(self, seconds: float) -> None:
        await wait_event(self.stopping, seconds)

    async def _ensure_group(self) -> None:
        try:
            # From "0": entries added before the group existed are work too.
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    async def _drain_own_pending(self) -> None:
        """Entries delivered to this consumer name but never acknowledged (we crashed)."""
        start = "0"
        while not self.stopping.is_set():
            reply = await self.redis.xreadgroup(
                self.group, self.consumer, {self.stream: start}, count=READ_COUNT
            )
            entries = reply[0][1] if reply else []
            for entry_id, fields in entries:
                await self._dispatch(entry_id, fields)
            if len(entries) < READ_COUNT:
                return
            start = entries[-1][0]

    async def _claim(self, min_idle_ms: int) -> None:
        """Claims pending entries idle at least `min_idle_ms` (0: all of them), in stream order."""
        start = "0-0"
        while not self.stopping.is_set():
            reply = await self.redis.xautoclaim(
                self.stream,
                self.group,
                self.consumer,
                min_idle_time=min_idle_ms,
                start_id=start,
                count=READ_COUNT,
            )
            next_start, entries = reply[0], reply[1]
            for entry_id, fields in entries:
                if entry_id not in self._in_flight and min_idle_ms:
                    log.info(
                        "claimed an abandoned entry", extra={"stream": self.stream, "entry_id": entry_id}
                    )
                await self._dispatch(entry_id, fields)
            if next_start in ("0-0", start):
                return
            start = next_start

    @property
    def _block_ms(self) -> int:
        # A read blocks briefly so that the loop comes back to claiming regularly.
        return max(100, min(2000, self.claim_idle_ms // 3))

    async def _read_new(self) -> None:
        block_ms = self._block_ms
        room = self.max_in_flight - len(self._in_flight)
        if room <= 0:
            # Full: the stream is the queue. Wait for a slot instead of reading entries we
            # could not hold (and would not heartbeat).
            self._room.clear()
            await wait_event(self._room, block_ms / 1000)
            return
        reply = await self.redis.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=min(READ_COUNT, room), block=block_ms
        )
        for _, entries in reply or []:
            for entry_id, fields in entries:
                await self._dispatch(entry_id, fields)

    async def _dispatch(self, entry_id: str, fields: Fields | None) -> None:
        if entry_id in self._in_flight:
            return  # already ours (a re-read of our own pending entry, or a claim of it)
        if not fields:
            # Deleted while pending (XDEL without XACK): nothing left to handle.
            await self.redis.xack(self.stream, self.group, entry_id)
            return
        self._in_flight.add(entry_id)
        key = self.key_of(fields)
        queue = self._queues.setdefault(key, asyncio.Queue())
        queue.put_nowait((entry_id, fields))
        if key not in self._workers:
            self._workers[key] = asyncio.create_task(self._work(key, queue))

    def _release(self, entry_id: str) -> None:
        self._in_flight.discard(entry_id)
        if len(self._in_flight) < self.max_in_flight:
            self._room.set()

    async def _work(self, key: str, queue: asyncio.Queue[tuple[str, Fields]]) -> None:
        try:
            while not queue.empty() and not self.stopping.is_set():
                entry_id, fields = queue.get_nowait()
                try:
                    finished = await self._handle_until_finished(entry_id, fields)
                finally:
                    self._release(entry_id)
                if not finished:
                    break  # the rest of the lane must not overtake it: it all stays pending
        finally:
            # Stopping (or cancelled by drain): what is still queued stays pending in Redis, and
            # comes back in stream order (own pending on restart, or claimed by a peer).
            while not queue.empty():
                self._release(queue.get_nowait()[0])
            del self._workers[key]
            self._queues.pop(key, None)

    async def _handle_until_finished(self, entry_id: str, fields: Fields) -> bool:
        """Runs the handler until it finishes the entry; False if it is left pending."""
        delay = self.retry_base_s
        attempt = 0
        while True:
            try:
                outcome = await self.handle(entry_id, fields)
            except Exception as error:
                attempt += 1
                extra = {"stream": self.stream, "entry_id": entry_id, "attempt": attempt, "retry_in_s": delay}
                if attempt == 1:
                    log.exception("handler failed; retrying it in place", extra=extra)
                else:
                    log.warning("handler failed again", extra=extra | {"error": repr(error)})
                await self._pause(delay)
                if self.stopping.is_set():
                    return False
                delay = min(delay * 2, self.retry_max_s)
                continue
            if outcome is None or outcome is Outcome.DONE:
                await self._ack(entry_id)
            return outcome is not Outcome.KEEP_PENDING

    async def _ack(self, entry_id: str) -> None:
        for attempt in range(5):
            try:
                await self.redis.xack(self.stream, self.group, entry_id)
                return
            except (RedisError, OSError):
                await asyncio.sleep(0.2 * (attempt + 1))
        log.error("could not acknowledge an entry; it will be handled again", extra={"stream": self.stream})

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(max(self.claim_idle_ms / 3000, 0.5))
            ids = list(self._in_flight)
            try:
                for i in range(0, len(ids), HEARTBEAT_BATCH):
                    await self.redis.xclaim(
                        self.stream,
                        self.group,
                        self.consumer,
                        min_idle_time=0,
                        message_ids=ids[i : i + HEARTBEAT_BATCH],
                        justid=True,
                    )
                if self.retain is not None:
                    await self._trim()
            except (RedisError, OSError):
                pass  # the next beat tries again; the read loop reports the outage

    async def _trim(self) -> None:
        """Trims the history beyond `retain` entries, but never an entry the group has not
        acknowledged: only ids below both the oldest pending one and the last one delivered
        (entries after it were never read) go. New entries only get higher ids and pending
        ones only get acknowledged, so the bound stays safe while we trim."""
        assert self.retain is not None
        length = await self.redis.xlen(self.stream)
        if length <= self.retain:
            return
        # The first entry the cap keeps (at most TRIM_BATCH entries go per beat).
        over = await self.redis.xrange(self.stream, count=min(length - self.retain, TRIM_BATCH) + 1)
        bound = over[-1][0]
        group = next((g for g in await self.redis.xinfo_groups(self.stream) if g["name"] == self.group), None)
        if group is None:
            return
        bound = min(bound, group["last-delivered-id"], key=_stream_id)
        pending = await self.redis.xpending(self.stream, self.group)
        if pending["pending"]:
            bound = min(bound, pending["min"], key=_stream_id)
        await self.redis.xtrim(self.stream, minid=bound, approximate=False)


def _stream_id(entry_id: str) -> tuple[int, int]:
    millis, _, seq = entry_id.partition("-")
    return int(millis), int(seq or 0)
