"""The bridge's Redis caches of tool results, shared by every replica.

Which results are cached, for how long, and what invalidates them:
  - list_projects, per caller, 5 min; create_project and execute_coding_task drop it;
    share_project and unshare_project drop the owner's and the member's (access changes at once).
  - check_system_health, one for everybody, 1 min.
  - get_session_files, per caller and session, 10 min, but only once the bridge has seen the
    session end (status succeeded/failed/cancelled from get_session_details or cancel_session,
    through CallTool or WatchSession): while a session runs its files change, and a stale list
    would hide new files. The TTL is also cut short so a cached download_url is never served past its
    expires_at. unshare_project drops the member's for each of the project's sessions.
A cache is an optimisation: when Redis fails, the call goes to AutoCoder as if nothing was cached.
Results hold the user's project names and descriptions: they are stored encrypted.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis.exceptions import RedisError
from wacoder import keys
from wacoder.crypto import InvalidToken, StateCipher
from wacoder.redis import Store

log = logging.getLogger("mcp_bridge.cache")

# cancel_session changes a project's status (list_projects shows its latest session's).
WRITE_TOOLS = frozenset({"create_project", "execute_coding_task", "cancel_session"})
# Tools that change who may see a project: the caller (its owner) and `member` (ADR 0002).
SHARING_TOOLS = frozenset({"share_project", "unshare_project"})
CACHEABLE_TOOLS = frozenset({"list_projects", "check_system_health", "get_session_files"})  # slot_for's
ENDED_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
# Do not serve a download link that is about to expire.
_URL_EXPIRY_MARGIN_S = 60


@dataclass(frozen=True)
class CacheSlot:
    key: str
    ttl_s: int


class ResultCache:
    def __init__(self, redis: Store, cipher: StateCipher) -> None:
        self.redis = redis
        self.cipher = cipher

    async def slot_for(self, name: str, arguments: dict[str, Any], caller: str) -> CacheSlot | None:
        """Where this call's result is cached, or None when it must not be."""
        if name == "list_projects":
            return CacheSlot(keys.projects_cache(caller), keys.PROJECTS_TTL_S)
        if name == "check_system_health":
            return CacheSlot(keys.health_cache(), keys.HEALTH_TTL_S)
        if name == "get_session_files":
            session_id = str(arguments.get("session_id", ""))
            if session_id and await self._safe(self.redis.exists(keys.session_ended(caller, session_id))):
                return CacheSlot(keys.files_cache(caller, session_id), keys.FILES_TTL_S)
        return None

    async def get(self, slot: CacheSlot) -> str | None:
        """The cached result as JSON text, or None (a value written under a retired key too)."""
        value = await self._safe(self.redis.get(slot.key))
        if not isinstance(value, str):
            return None
        try:
            return self.cipher.decrypt(value)
        except InvalidToken:
            return None

    async def put(self, slot: CacheSlot, result: Any) -> None:
        ttl = min(slot.ttl_s, _url_lifetime_s(result))
        if ttl > 0:
            await self._safe(self.redis.set(slot.key, self.cipher.encrypt(json.dumps(result)), ex=ttl))

    async def after_call(self, name: str, arguments: dict[str, Any], caller: str, result: Any) -> None:
        """Invalidation and bookkeeping once a call has been made (whatever its outcome)."""
        if name in WRITE_TOOLS:
            await self._safe(self.redis.delete(keys.projects_cache(caller)))
        elif name in SHARING_TOOLS:
            await self.forget_access(name, arguments, caller, result)
        if name in ("get_session_details", "cancel_session") and isinstance(result, dict):
            await self.note_session_status(caller, str(arguments.get("session_id", "")), result.get("status"))

    async def forget_access(self, name: str, arguments: dict[str, Any], caller: str, result: Any) -> None:
        """After a share or unshare (whatever its outcome: it may have happened): neither side's
        cached project list may show the old access, nor may a former member's cached files.
        One key per command: in a Redis Cluster these live in different slots."""
        member = arguments.get("member")
        stale = [keys.projects_cache(caller)]
        if isinstance(member, str) and member:
            stale.append(keys.projects_cache(member))
            sessions = result.get("sessions") if isinstance(result, dict) else None
            if name == "unshare_project" and isinstance(sessions, list):
                stale += [keys.files_cache(member, str(s)) for s in sessions]
        for key in stale:
            await self._safe(self.redis.delete(key))

    async def note_session_status(self, caller: str, session_id: str, status: Any) -> None:
        if session_id and status in ENDED_STATUSES:
            await self._safe(
                self.redis.set(
                    keys.session_ended(caller, session_id), str(status), ex=keys.SESSION_ENDED_TTL_S
                )
            )

    async def _safe(self, op: Any) -> Any:
        try:
            return await op
        except (RedisError, OSError) as exc:
            log.warning("redis cache unavailable, going without", extra={"error": type(exc).__name__})
            return None


def _url_lifetime_s(result: Any) -> int:
    """Seconds until the first link in a files result (a file's, or the zip's) expires (a large
    number if none). AutoCoder says when as unix seconds; an ISO 8601 time is understood too."""
    lifetime = 10**9
    if not isinstance(result, dict):
        return lifetime
    expiries = [result.get("archive_expires_at")]
    expiries += [item.get("expires_at") for item in result.get("files") or [] if isinstance(item, dict)]
    now = datetime.now(UTC)
    for expires_at in expiries:
        if isinstance(expires_at, bool):
            continue
        if isinstance(expires_at, int | float):
            left = int(expires_at - now.timestamp())
        elif isinstance(expires_at, str):
            try:
                expires = datetime.fromisoformat(expires_at.replace("Z", "+00:00"))
            except ValueError:
                continue
            if expires.tzinfo is None:
                expires = expires.replace(tzinfo=UTC)
            left = int((expires - now).total_seconds())
        else:
            continue
        lifetime = min(lifetime, left - _URL_EXPIRY_MARGIN_S)
    return lifetime
