"""Handles one inbox entry, exactly once as the user sees it.

The reply is computed once and stored (encrypted) in the same transaction as the state it
changed; sending it uses idempotency keys. So a crash at any point either redoes work
nothing has seen yet, or resends a stored reply that the notifier de-duplicates.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from opentelemetry.trace import Span, SpanKind
from redis.exceptions import RedisError
from wacoder import keys, tracing
from wacoder.botconfig import RELOAD_INTERVAL_S
from wacoder.crypto import StateCipher
from wacoder.inbox import Inbox
from wacoder.phones import phone_hash, to_e164, to_whatsapp
from wacoder.redis import Store
from wacoder.v1 import agent_pb2

from agent import metrics
from agent.autocoder import AutoCoder
from agent.commands import is_command
from agent.dialogue import FreeTextResponder, reply_to
from agent.media import MediaReader, compose
from agent.outbound import Outbound
from agent.progress import ProgressRelay
from agent.sharing import Sharing
from agent.state import StateStore
from agent.turn import Turn

log = logging.getLogger("agent.processor")

# A few of the bot config's reload intervals (wacoder.botconfig): every service re-reads it on its own.
NOTICE_PATIENCE_S = 5 * RELOAD_INTERVAL_S


class Processor:
    def __init__(
        self,
        *,
        redis: Store,
        cipher: StateCipher,
        inbox: Inbox,
        store: StateStore,
        autocoder: AutoCoder,
        outbound: Outbound,
        free_text: FreeTextResponder,
        progress: ProgressRelay,
        hash_salt: str,
        allowed: Callable[[str], bool] = lambda phone: False,
        media: MediaReader | None = None,
    ) -> None:
        self.redis = redis
        self.cipher = cipher
        self.inbox = inbox
        self.store = store
        self.autocoder = autocoder
        self.outbound = outbound
        self.free_text = free_text
        self.progress = progress
        self.hash_salt = hash_salt
        self.allowed = allowed  # the whitelist now: who /share may give access to
        self.media = media

    async def handle(self, entry_id: str, fields: dict[str, str]) -> None:
        # A span per attempt at the entry, continuing the trace the message carries (from the
        # webhook, through the inbox): a message handled after a restart still joins it.
        with tracing.span(
            "agent: handle message",
            kind=SpanKind.CONSUMER,
            parent=fields.get(tracing.TRACEPARENT),
            attributes={"messaging.system": "redis", "messaging.message.id": entry_id},
        ) as span:
            await self._handle(entry_id, fields, span)

    async def _handle(self, entry_id: str, fields: dict[str, str], span: Span) -> None:
        message = self.inbox.decode(fields)
        span.set_attribute("twilio.message_sid", message.message_sid)
        started = time.perf_counter()
        user = phone_hash(message.sender, self.hash_salt)
        # The inbox entry's id is the time the webhook (or the agent) stored the message.
        accepted_ms = _accepted_ms(entry_id)
        stored = await self.redis.get(keys.agent_replies(user, message.message_sid))
        span.set_attribute("wacoder.redo", stored is not None)
        if stored is not None:
            # A redo (the send failed, or we crashed after committing): resend, don't recompute.
            answer = Answer.from_json(self.cipher.decrypt(stored))
        else:
            answer = await self._respond(message)
        await self.outbound.send(
            message.sender, answer.text, key=f"reply:{message.message_sid}", accepted_at_ms=accepted_ms or 0
        )
        for n, (to, notice) in enumerate(answer.notices):  # e.g. "... shared project X with you"
            # The agent's whitelist allowed `to`; the notifier's may not have the same edit yet.
            await self.outbound.send(
                to_whatsapp(to),
                notice,
                key=f"notice:{message.message_sid}:{n}",
                refused_patience_s=NOTICE_PATIENCE_S,
            )
        # Progress starts after the reply that announced the session, so it arrives after it; on
        # a redo too (starting a relay that already runs is a no-op).
        for session_id in answer.sessions:
            self.progress.start(keys.shard_of(user), session_id)
        metrics.MESSAGES_PROCESSED.inc()
        try:
            await metrics.note_active(self.redis, user)
        except (RedisError, OSError) as error:  # a metric is not worth failing the message for
            log.warning("active users not counted", extra={"error": type(error).__name__})
        metrics.PROCESSING_SECONDS.observe(time.perf_counter() - started)
        if accepted_ms is not None:
            metrics.END_TO_END_SECONDS.observe(max(0.0, time.time() - accepted_ms / 1000))
        log.info(
            "message processed",
            extra={
                "phone": to_e164(message.sender),
                "reply_chars": len(answer.text),
                "duration_ms": round((time.perf_counter() - started) * 1000),
            },
        )

    async def _respond(self, message: agent_pb2.InboundMessage) -> Answer:
        phone = to_e164(message.sender)
        state = await self.store.load(phone)
        turn = Turn(
            state=state,
            caller=phone_hash(phone, self.hash_salt),
            autocoder=self.autocoder,
            cause=message.message_sid,
            sharing=Sharing(self.hash_salt, self.allowed),
        )
        said = message.body
        if message.media and self.media is not None:
            text, said = await self._with_media(turn, message)
        else:
            text = await reply_to(turn, message.body, self.free_text)
        kind = "empty" if not said.strip() else "command" if is_command(said) else "free_text"
        metrics.REPLIES.labels(kind).inc()
        if not turn.cleared:
            state.remember(said, text)
        notices = list(turn.sharing.notices) if turn.sharing else []
        answer = Answer(text, [session_id for session_id, _ in turn.started_sessions], notices)
        # Records outside the user's slot first; written again by a redo, they change nothing.
        for project_id in turn.linked_projects:
            await self.store.add_project_user(phone, project_id)
        for project_id, member, joined in turn.sharing.changes if turn.sharing else []:
            await self.store.set_project_member(project_id, member, joined)
        for session_id, project in turn.started_sessions:
            await self.progress.record_session(session_id, turn.caller, project)
        # Then the turn itself, atomically (all in the user's slot).
        async with self.redis.pipeline(transaction=True) as pipe:
            self.store.save(pipe, state)
            pipe.set(
                keys.agent_replies(turn.caller, message.message_sid),
                self.cipher.encrypt(answer.to_json()),
                ex=keys.DAY_S,
            )
            for project_id in turn.linked_projects:
                self.store.link_project(pipe, phone, project_id)
            for session_id, project in turn.started_sessions:
                self.progress.register(pipe, session_id, message.sender, turn.caller, project)
            await pipe.execute()
        return answer

    async def _with_media(self, turn: Turn, message: agent_pb2.InboundMessage) -> tuple[str, str]:
        """(the reply, what the history remembers) of a message with attachments: they are read
        for this turn only (agent.media); its text, a voice note's transcript included, is
        answered as any text is."""
        assert self.media is not None
        media = await self.media.read(message)
        turn.images = media.images
        answer = None
        if media.text.strip() or not (media.images or media.notes):
            answer = await reply_to(turn, media.text, self.free_text)
        elif media.images and self.media.llm:
            answer = await reply_to(turn, "", self.free_text, allow_empty=True)
        reply = compose(media, answer, llm=self.media.llm, passed_on=turn.passed_on_images)
        return reply, media.remembered


def _accepted_ms(entry_id: str) -> int | None:
    """When the message was stored (epoch ms): a stream entry's id starts with it."""
    try:
        return int(entry_id.split("-", 1)[0])
    except ValueError:
        return None


@dataclass(frozen=True)
class Answer:
    """The reply to one message and the coding sessions it started: stored together, so a
    redo resends the reply and still relays the sessions' progress."""

    text: str
    sessions: list[str]
    # (to, text): messages to other users the turn caused (/share tells the other user).
    notices: list[tuple[str, str]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({"text": self.text, "sessions": self.sessions, "notices": self.notices})

    @classmethod
    def from_json(cls, raw: str) -> Answer:
        data = json.loads(raw)
        notices = [(str(to), str(text)) for to, text in data.get("notices", [])]
        return cls(str(data["text"]), [str(s) for s in data.get("sessions", [])], notices)
