"""Durable work queues on Redis Streams with consumer groups, as the agent's inbox and the
notifier's outbox use them.

Guarantees, and why:
- An entry is acknowledged only after its handler returned: a crash leaves it pending.
- After a restart a consumer first takes back its own pending entries (same consumer name).
- Entries pending on a consumer that went away are claimed after `claim_idle_ms`; a live
  consumer keeps its slow entries by refreshing their idle time (a heartbeat), so slow work
  is never handed to a second consumer while the first still works on it.
- Entries with the same key (a phone number) are handled one at a time, in stream order;
  different keys run concurrently.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

log = logging.getLogger("wacoder.streams")

Fields = dict[str, str]
Handler = Callable[[str, Fields], Awaitable[None]]


def default_consumer_name(prefix: str) -> str:
    """Stable across restarts of the same pod or host, so pending work is resumed at once."""
    return f"{prefix}-{socket.gethostname()}"


class KeyedStreamConsumer:
    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        stream: str,
        group: str,
        consumer: str,
        key_of: Callable[[Fields], str],
        handle: Handler,
        claim_idle_ms: int = 15_000,
        max_in_flight: int = 256,
    ) -> None:
        self.redis = redis
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.key_of = key_of
        self.handle = handle
        self.claim_idle_ms = claim_idle_ms
        self._slots = asyncio.Semaphore(max_in_flight)
        self._queues: dict[str, asyncio.Queue[tuple[str, Fields]]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._in_flight: set[str] = set()
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        """Consumes until `stop()`; survives Redis going away and coming back."""
        heartbeat = asyncio.create_task(self._heartbeat())
        backoff = 0.1
        # Own pending entries are taken back once per (re)connection; after that, an entry
        # whose handler failed is retried when it has been idle claim_idle_ms, not in a tight loop.
        resume_own = True
        try:
            while not self._stopping.is_set():
                try:
                    await self._ensure_group()
                    if resume_own:
                        await self._drain_own_pending()
                        resume_own = False
                    await self._claim_abandoned()
                    await self._read_new()
                    backoff = 0.1
                except ResponseError as error:
                    if "NOGROUP" not in str(error):
                        raise
                    # The stream or group vanished (Redis restarted without persistence).
                    resume_own = True
                    continue
                except (RedisError, OSError) as error:
                    log.warning(
                        "stream read failed, retrying", extra={"stream": self.stream, "error": str(error)}
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    resume_own = True
        finally:
            heartbeat.cancel()

    def stop(self) -> None:
        self._stopping.set()

    async def drain(self, timeout_s: float) -> None:
        """Waits for in-flight entries to finish (on shutdown); what remains stays pending."""
        workers = list(self._workers.values())
        if workers:
            await asyncio.wait(workers, timeout=timeout_s)

    async def _ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    async def _drain_own_pending(self) -> None:
        """Entries delivered to this consumer name but never acknowledged (we crashed)."""
        start = "0"
        while True:
            reply = await self.redis.xreadgroup(self.group, self.consumer, {self.stream: start}, count=100)
            entries = reply[0][1] if reply else []
            fresh = [(eid, f) for eid, f in entries if eid not in self._in_flight]
            for entry_id, fields in fresh:
                await self._dispatch(entry_id, fields)
            if len(entries) < 100:
                return
            start = entries[-1][0]

    async def _claim_abandoned(self) -> None:
        start = "0-0"
        while True:
            next_start, entries, *_ = await self.redis.xautoclaim(
                self.stream,
                self.group,
                self.consumer,
                min_idle_time=self.claim_idle_ms,
                start_id=start,
                count=100,
            )
            for entry_id, fields in entries:
                if fields and entry_id not in self._in_flight:
                    await self._dispatch(entry_id, fields)
            if next_start in ("0-0", start):
                return
            start = next_start

    async def _read_new(self) -> None:
        # Block briefly so the loop comes back to claiming regularly.
        block_ms = min(2000, self.claim_idle_ms // 3)
        reply = await self.redis.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=100, block=block_ms
        )
        for _, entries in reply or []:
            for entry_id, fields in entries:
                await self._dispatch(entry_id, fields)

    async def _dispatch(self, entry_id: str, fields: Fields) -> None:
        await self._slots.acquire()
        self._in_flight.add(entry_id)
        key = self.key_of(fields)
        queue = self._queues.setdefault(key, asyncio.Queue())
        queue.put_nowait((entry_id, fields))
        if key not in self._workers:
            self._workers[key] = asyncio.create_task(self._work(key, queue))

    async def _work(self, key: str, queue: asyncio.Queue[tuple[str, Fields]]) -> None:
        try:
            while not queue.empty():
                entry_id, fields = queue.get_nowait()
                try:
                    await self.handle(entry_id, fields)
                    await self._ack(entry_id)
                except Exception:
                    # Left pending: it is retried after claim_idle_ms (by us or another consumer).
                    log.exception("handler failed; entry stays pending", extra={"stream": self.stream})
                finally:
                    self._in_flight.discard(entry_id)
                    self._slots.release()
        finally:
            del self._workers[key]
            if queue.empty():
                self._queues.pop(key, None)
            else:  # something arrived between the last get and the cleanup
                self._workers[key] = asyncio.create_task(self._work(key, queue))

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
            if not ids:
                continue
            try:
                await self.redis.xclaim(
                    self.stream, self.group, self.consumer, min_idle_time=0, message_ids=ids, justid=True
                )
            except (RedisError, OSError):
                pass
