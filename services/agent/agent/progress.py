"""Relays a running coding session's progress to the user who started it.

A message when an agent finishes, batched so a user gets at most one progress message per
BATCH_INTERVAL_S, then a final summary with test results and file links. Each relay is
registered in Redis with the last event it reported, in the user's shard, and is run by the
replica that owns that shard (`wacoder.leases`): exactly one replica relays a session, and
whoever owns the shard next resumes it where it stopped. Idempotency keys (session + last
event of the batch) make a resent message a no-op at the notifier, and a batch is written down
(`sending`) before it is sent, so a relay resumed after a crash sends that same batch again
rather than a differently cut one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from redis.exceptions import RedisError
from wacoder import keys, tracing
from wacoder.crypto import InvalidToken, StateCipher
from wacoder.redis import Pipe, Store
from wacoder.v1 import bridge_pb2

from agent import metrics
from agent.autocoder import AutoCoder, AutoCoderUnavailable, ToolError
from agent.links import summary_links
from agent.outbound import Outbound
from agent.state import Project

log = logging.getLogger("agent.progress")

BATCH_INTERVAL_S = 5.0
AGENT_ICONS = {"done": "✅", "failed": "❌", "skipped": "⏭️"}


class ProgressRelay:
    def __init__(
        self,
        redis: Store,
        cipher: StateCipher,
        autocoder: AutoCoder,
        outbound: Outbound,
        *,
        give_up_after_s: float,
        batch_interval_s: float = BATCH_INTERVAL_S,
    ) -> None:
        self.redis = redis
        self.cipher = cipher
        self.autocoder = autocoder
        self.outbound = outbound
        self.batch_interval_s = batch_interval_s
        self.give_up_after_s = give_up_after_s
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._shard_of: dict[str, int] = {}

    def register(self, pipe: Pipe, session_id: str, to: str, caller: str, project: Project) -> None:
        """Queues the relay's record on `pipe`, in the turn's transaction (the caller's shard)."""
        shard = keys.shard_of(caller)
        key = keys.session_watch(shard, session_id)
        # Where to send and the project's name are the user's: stored encrypted.
        pipe.hset(
            key,
            mapping={
                "to": self.cipher.encrypt(to),
                "caller": caller,
                "project": self.cipher.encrypt(project.name),
                "after": 0,
            },
        )
        pipe.expire(key, keys.DAY_S)
        pipe.sadd(keys.active_watches(shard), session_id)

    async def record_session(self, session_id: str, caller: str, project: Project) -> None:
        """The seed's session:{id}, for operators: unlike the watch (which must know where to
        send), it holds no phone number and no task text. A slot of its own, so it is written
        before the turn commits; a redo finds it there and leaves it."""
        now = time.time()
        record = {
            "session_id": session_id,
            "project_id": project.project_id,
            "caller": caller,
            "status": "queued",
            "created_at": now,
            "updated_at": now,
            "test_results": None,
        }
        await self.redis.set(keys.session(session_id), json.dumps(record), ex=keys.SESSION_TTL_S, nx=True)

    def start(self, shard: int, session_id: str) -> None:
        """Relays the session unless it is relayed already (so starting again is harmless)."""
        if session_id not in self._tasks:
            # Outside the trace of the message that started the session: a relay lasts minutes
            # and outlives it (its sends are traces of their own).
            task = asyncio.create_task(self._relay(shard, session_id), context=tracing.detached())
            self._tasks[session_id] = task
            self._shard_of[session_id] = shard

            def forget(_: asyncio.Task[None]) -> None:
                # A finished relay is forgotten: the dicts hold only the running ones.
                self._tasks.pop(session_id, None)
                self._shard_of.pop(session_id, None)

            task.add_done_callback(forget)

    @property
    def running(self) -> int:
        return len(self._tasks)

    async def resume(self, shard: int) -> None:
        """Relays every session of a shard this replica has just come to own."""
        for session_id in await self.redis.smembers(keys.active_watches(shard)):
            self.start(shard, session_id)

    async def release(self, shard: int) -> None:
        """Stops relaying a shard's sessions (its next owner resumes them)."""
        await self._cancel([s for s, of in self._shard_of.items() if of == shard])

    async def stop(self) -> None:
        await self._cancel(list(self._tasks))

    async def _cancel(self, session_ids: list[str]) -> None:
        tasks = [self._tasks[s] for s in session_ids if s in self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _relay(self, shard: int, session_id: str) -> None:
        key = keys.session_watch(shard, session_id)
        # Any contact (the watch reached AutoCoder, or an event arrived) ends an outage, so two
        # short blips far apart are two short outages, not one long one.
        outage = Outage()
        while True:
            watch = await self.redis.hgetall(key)
            if not watch:
                await self.redis.srem(keys.active_watches(shard), session_id)
                return
            try:
                watch |= {
                    "to": self.cipher.decrypt(watch["to"]),
                    "project": self.cipher.decrypt(watch["project"]),
                }
            except (InvalidToken, KeyError):
                # Written under a key that is no longer configured: nobody can be told any more.
                log.error("progress relay unreadable; dropped", extra={"session_id": session_id})
                await self._forget(shard, session_id)
                return
            watch["shard"] = str(shard)
            try:
                await self._follow(session_id, watch, outage)
                return
            except AutoCoderUnavailable:
                if outage.began() > self.give_up_after_s:
                    await self._finish(
                        session_id,
                        watch,
                        [
                            f"⚠️ I lost track of session `{session_id}` (AutoCoder is unreachable). "
                            f"Ask /status {session_id} later."
                        ],
                    )
                    return
                await asyncio.sleep(2.0)
            except ToolError:
                await self._finish(session_id, watch, [])
                return
            except (RedisError, OSError):
                await asyncio.sleep(2.0)
            except Exception:
                log.exception("progress relay failed; retrying")
                await asyncio.sleep(5.0)

    async def _follow(self, session_id: str, watch: dict[str, str], outage: Outage) -> None:
        events: asyncio.Queue[bridge_pb2.SessionEvent | None] = asyncio.Queue()

        async def read() -> None:
            after = int(watch["after"])
            try:
                async for event in self.autocoder.watch(watch["caller"], session_id, after, outage.end):
                    outage.end()
                    await events.put(event)
            finally:
                await events.put(None)  # ended or failed: the loop below asks the reader which

        reader = asyncio.create_task(read())
        pending: list[bridge_pb2.SessionEvent] = []
        last_sent = time.monotonic()
        # A batch written down but perhaps not sent (a crash, or the shard moved): cut it again
        # exactly there, so its resend carries the same idempotency key.
        replay_until = int(watch.get("sending") or 0)
        if replay_until <= int(watch["after"]):
            replay_until = 0
        try:
            while True:
                wait = max(0.0, last_sent + self.batch_interval_s - time.monotonic()) if pending else None
                try:
                    async with asyncio.timeout(wait):
                        event = await events.get()
                except TimeoutError:
                    await self._send_batch(session_id, watch, pending)
                    pending, last_sent = [], time.monotonic()
                    continue
                if event is None:
                    reader.result()  # re-raises what ended the stream
                    raise AutoCoderUnavailable("watch ended before the session did")
                if event.final:
                    # The summary keeps the pace too, and carries whatever was still batched.
                    await asyncio.sleep(max(0.0, last_sent + self.batch_interval_s - time.monotonic()))
                    text = "\n".join(
                        [*map(agent_line, pending), summary(session_id, watch["project"], event)]
                    )
                    await self._record_end(session_id, event)
                    await self._finish(session_id, watch, [text], files=await self._files(session_id, watch))
                    return
                if replay_until and event.seq > replay_until and pending:
                    await self._send_batch(session_id, watch, pending)
                    pending, last_sent, replay_until = [], time.monotonic(), 0
                if event.agent_status in AGENT_ICONS:
                    pending.append(event)
                if replay_until and event.seq == replay_until and pending:
                    await self._send_batch(session_id, watch, pending)
                    pending, last_sent, replay_until = [], time.monotonic(), 0
        finally:
            reader.cancel()

    async def _send_batch(
        self, session_id: str, watch: dict[str, str], batch: list[bridge_pb2.SessionEvent]
    ) -> None:
        last = batch[-1].seq
        text = "\n".join(map(agent_line, batch))
        key = keys.session_watch(int(watch["shard"]), session_id)
        await self.redis.hset(key, "sending", last)
        await self.outbound.send(watch["to"], text, key=f"progress:{session_id}:{last}")
        metrics.PROGRESS_MESSAGES.labels("update").inc()
        await self.redis.hset(key, "after", last)
        watch["after"] = str(last)

    async def _files(self, session_id: str, watch: dict[str, str]) -> dict[str, Any]:
        """get_session_files: the zip link and the files (empty when AutoCoder cannot say)."""
        try:
            result = await self.autocoder.call(watch["caller"], "get_session_files", session_id=session_id)
        except (AutoCoderUnavailable, ToolError):
            return {}
        return result if isinstance(result, dict) else {}

    async def _record_end(self, session_id: str, final: bridge_pb2.SessionEvent) -> None:
        raw = await self.redis.get(keys.session(session_id))
        details: dict[str, Any] = json.loads(final.detail_json or "{}")
        outcome = metrics.outcome_label(str(details.get("status", final.status)))
        metrics.SESSIONS_COMPLETED.labels(outcome).inc()
        if raw is None:
            return
        created = json.loads(raw).get("created_at")
        if isinstance(created, int | float):
            metrics.SESSION_SECONDS.labels(outcome).observe(max(0.0, time.time() - created))
        record = json.loads(raw) | {
            "status": details.get("status", final.status),
            "updated_at": time.time(),
            "test_results": details.get("test_results"),
        }
        await self.redis.set(keys.session(session_id), json.dumps(record), ex=keys.SESSION_TTL_S)

    async def _finish(
        self,
        session_id: str,
        watch: dict[str, str],
        texts: list[str],
        files: dict[str, Any] | None = None,
    ) -> None:
        # One message: the zip and three short links fit well under WhatsApp's 1,600 characters.
        if links := summary_links(files or {}):
            texts = [texts[0] + "\n\n" + links]
        for text in texts:
            await self.outbound.send(watch["to"], text, key=f"progress:{session_id}:final")
            metrics.PROGRESS_MESSAGES.labels("final").inc()
        await self._forget(int(watch["shard"]), session_id)

    async def _forget(self, shard: int, session_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.session_watch(shard, session_id))
            pipe.srem(keys.active_watches(shard), session_id)
            await pipe.execute()


class Outage:
    """How long AutoCoder has been out of reach for one relay, as seen by its failures."""

    def __init__(self) -> None:
        self._since: float | None = None

    def began(self) -> float:
        """Records a failure; returns the seconds since the outage began."""
        now = time.monotonic()
        self._since = self._since or now
        return now - self._since

    def end(self) -> None:
        self._since = None


def agent_line(event: bridge_pb2.SessionEvent) -> str:
    # AutoCoder may already start its message with "<agent> <status>:"; say it once.
    detail = event.message.removeprefix(f"{event.agent} {event.agent_status}:").strip()
    icon = AGENT_ICONS[event.agent_status]
    return f"{icon} *{event.agent}* {event.agent_status}: {detail} ({event.progress}%)"


def summary(session_id: str, project: str, final: bridge_pb2.SessionEvent) -> str:
    details: dict[str, Any] = json.loads(final.detail_json or "{}")
    status = details.get("status", final.status)
    icon = {"succeeded": "🏁", "cancelled": "🛑"}.get(status, "❌")
    lines = [f"{icon} Session `{session_id}` in *{project}*: *{status}*"]
    agents = details.get("agents") or {}
    if agents:
        lines.append(
            "Agents: "
            + ", ".join(f"{name} {AGENT_ICONS.get(state, state)}" for name, state in agents.items())
        )
    tests = details.get("test_results")
    if tests:
        lines.append(
            f"Tests: {tests.get('passed', 0)} passed, {tests.get('failed', 0)} failed"
            + (f", {tests['errors']} errors" if tests.get("errors") else "")
        )
    if details.get("summary"):
        lines.append(str(details["summary"]))
    return "\n".join(lines)
