"""Who gets in, in one Redis round trip per message.

A whitelisted sender: one script spots a Twilio replay (MessageSid already accepted), counts the
per-phone and global rate limits, and opens the user's 24-hour window. A stranger: one script
counts them against the strangers' limit. Either way a refusal the user hears about (a paid
message) is said at most once per window: the rate-limit notice once per rate window, the
not-authorized notice once an hour per number.
"""

from __future__ import annotations

from enum import StrEnum

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from wacoder import keys
from wacoder.botconfig import BotConfigSource
from wacoder.phones import phone_hash

RATE_WINDOW_S = 60

# KEYS: seen mark, per-phone counter, global counter, rate-limit notice, last-inbound mark.
# ARGV: per-phone limit, global limit, window, 24-hour window.
# A replay is not counted against the limits: Twilio retrying is not the user typing.
_ADMIT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 'duplicate' end
local phone = redis.call('INCR', KEYS[2])
if phone == 1 then redis.call('EXPIRE', KEYS[2], ARGV[3]) end
local limited = phone > tonumber(ARGV[1])
if not limited then
  local all = redis.call('INCR', KEYS[3])
  if all == 1 then redis.call('EXPIRE', KEYS[3], ARGV[3]) end
  limited = all > tonumber(ARGV[2])
end
if limited then
  if redis.call('SET', KEYS[4], '1', 'NX', 'EX', ARGV[3]) then return 'rate_limited' end
  return 'rate_limited_quiet'
end
redis.call('SET', KEYS[5], '1', 'EX', ARGV[4])
return 'ok'
"""

# KEYS: strangers' counter, not-authorized notice. ARGV: strangers' limit, window, notice TTL.
_STRANGER = """
local all = redis.call('INCR', KEYS[1])
if all == 1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
if all > tonumber(ARGV[1]) then return 'unauthorized_quiet' end
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[3]) then return 'unauthorized' end
return 'unauthorized_quiet'
"""


class Admission(StrEnum):
    OK = "ok"
    DUPLICATE = "duplicate"
    RATE_LIMITED = "rate_limited"  # refused, and the user is told
    RATE_LIMITED_QUIET = "rate_limited_quiet"  # refused; told already in this window
    UNAUTHORIZED = "unauthorized"
    UNAUTHORIZED_QUIET = "unauthorized_quiet"

    @property
    def tells_user(self) -> bool:
        return self in (Admission.RATE_LIMITED, Admission.UNAUTHORIZED)


class Gate:
    def __init__(self, redis: aioredis.Redis, config: BotConfigSource, hash_salt: str) -> None:
        self.config = config
        self.hash_salt = hash_salt
        self._admit = redis.register_script(_ADMIT)
        self._stranger = redis.register_script(_STRANGER)

    async def admit(self, phone: str, message_sid: str) -> Admission:
        """Raises redis errors for a whitelisted sender: the caller answers 503 so Twilio retries."""
        config = self.config.current
        user = phone_hash(phone, self.hash_salt)
        if not config.is_allowed(phone):
            return await self._refuse_stranger(user, config.global_per_minute)
        verdict = await self._admit(
            keys=[
                keys.inbound_seen(message_sid),
                keys.rate_limit(user),
                keys.RATE_LIMIT_GLOBAL,
                keys.refusal_notice("rate_limit", user),
                keys.last_inbound(user),
            ],
            args=[config.per_phone_per_minute, config.global_per_minute, RATE_WINDOW_S, keys.WINDOW_S],
        )
        return Admission(verdict)

    async def _refuse_stranger(self, user: str, limit: int) -> Admission:
        try:
            verdict = await self._stranger(
                keys=[keys.RATE_LIMIT_STRANGERS, keys.refusal_notice("unauthorized", user)],
                args=[limit, RATE_WINDOW_S, keys.UNAUTHORIZED_NOTICE_TTL_S],
            )
        except RedisError:
            return Admission.UNAUTHORIZED_QUIET  # nothing to lose: a stranger's message is not kept
        return Admission(verdict)
