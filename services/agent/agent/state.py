"""Conversation state per user, per the seed: conversation:{user} (encrypted at rest, 24 h
TTL refreshed on activity), user:{user}:projects and project:{id}:users, where a user is the
keyed hash of their number (the number itself is only inside the encrypted state)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from wacoder import keys
from wacoder.crypto import InvalidToken, StateCipher
from wacoder.phones import phone_hash
from wacoder.redis import Pipe, Store

# The seed's memory window: the last 10 exchanges (a user message and the bot's answer each).
MEMORY_EXCHANGES = 10


@dataclass
class Project:
    project_id: str
    name: str


@dataclass
class ConversationState:
    phone: str
    active_project: Project | None = None
    last_session: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    preferences: dict[str, Any] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    last_activity: float = field(default_factory=time.time)

    def remember(self, user_text: str, reply: str) -> None:
        now = time.time()
        self.history.append({"role": "user", "text": user_text, "ts": now})
        self.history.append({"role": "assistant", "text": reply, "ts": now})
        self.history = self.history[-2 * MEMORY_EXCHANGES :]
        self.last_activity = now

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: str) -> ConversationState:
        data = json.loads(raw)
        project = data.pop("active_project", None)
        return cls(active_project=Project(**project) if project else None, **data)


class StateStore:
    def __init__(self, redis: Store, cipher: StateCipher, hash_salt: str) -> None:
        self.redis = redis
        self.cipher = cipher
        self.hash_salt = hash_salt

    def user(self, phone: str) -> str:
        return phone_hash(phone, self.hash_salt)

    async def load(self, phone: str) -> ConversationState:
        raw = await self.redis.get(keys.conversation(self.user(phone)))
        if raw is None:
            return ConversationState(phone=phone)
        try:
            return ConversationState.from_json(self.cipher.decrypt(raw))
        except InvalidToken:
            # Written under another key (the key was rotated): start afresh rather than fail.
            return ConversationState(phone=phone)

    def save(self, pipe: Pipe, state: ConversationState) -> None:
        """Queues the write on `pipe`, so it commits atomically with the replies it produced."""
        pipe.set(
            keys.conversation(self.user(state.phone)),
            self.cipher.encrypt(state.to_json()),
            ex=keys.CONVERSATION_TTL_S,
        )

    def link_project(self, pipe: Pipe, phone: str, project_id: str) -> None:
        """The user's side of the seed's two-way index, user:{user}:projects (newest first),
        queued on `pipe` with the rest of the turn (the user's slot); it expires INDEX_TTL_S
        after the last time the user touched a project."""
        user = self.user(phone)
        pipe.lrem(keys.user_projects(user), 0, project_id)
        pipe.lpush(keys.user_projects(user), project_id)
        pipe.expire(keys.user_projects(user), keys.INDEX_TTL_S)

    async def set_project_member(self, project_id: str, user: str, joined: bool) -> None:
        """A shared project's member in both sides of the seed's index (user hashes): each side
        in its own slot, written before the turn commits; writing it again changes nothing."""
        async with self.redis.pipeline(transaction=False) as pipe:
            if joined:
                pipe.sadd(keys.project_users(project_id), user)
                pipe.expire(keys.project_users(project_id), keys.INDEX_TTL_S)
            else:
                pipe.srem(keys.project_users(project_id), user)
            await pipe.execute()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.lrem(keys.user_projects(user), 0, project_id)
            if joined:
                pipe.lpush(keys.user_projects(user), project_id)
                pipe.expire(keys.user_projects(user), keys.INDEX_TTL_S)
            await pipe.execute()

    async def add_project_user(self, phone: str, project_id: str) -> None:
        """The project's side, project:{id}:users (user hashes): a slot of its own, so it is
        written before the turn commits; writing it again on a redo changes nothing."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.sadd(keys.project_users(project_id), self.user(phone))
            pipe.expire(keys.project_users(project_id), keys.INDEX_TTL_S)
            await pipe.execute()
