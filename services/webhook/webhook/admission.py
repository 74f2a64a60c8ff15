"""Who gets in: the whitelist, then one Redis round trip that both spots a Twilio replay
(MessageSid already accepted) and counts the per-phone and global rate limits."""

from __future__ import annotations

from enum import StrEnum

import redis.asyncio as aioredis
from wacoder import keys
from wacoder.settings import Settings

RATE_WINDOW_S = 60

# A replay is not counted against the limits: Twilio retrying is not the user typing.
_ADMIT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 'duplicate' end
local phone = redis.call('INCR', KEYS[2])
if phone == 1 then redis.call('EXPIRE', KEYS[2], ARGV[3]) end
if phone > tonumber(ARGV[1]) then return 'rate_limited' end
local all = redis.call('INCR', KEYS[3])
if all == 1 then redis.call('EXPIRE', KEYS[3], ARGV[3]) end
if all > tonumber(ARGV[2]) then return 'rate_limited' end
return 'ok'
"""


class Admission(StrEnum):
    OK = "ok"
    DUPLICATE = "duplicate"
    RATE_LIMITED = "rate_limited"


class Gate:
    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self.settings = settings
        self._admit = redis.register_script(_ADMIT)

    async def admit(self, phone: str, message_sid: str) -> Admission:
        """Raises redis errors as they are: the caller turns them into a 503 so Twilio retries."""
        verdict = await self._admit(
            keys=[keys.inbound_seen(message_sid), keys.rate_limit(phone), keys.RATE_LIMIT_GLOBAL],
            args=[self.settings.rate_limit_per_phone, self.settings.rate_limit_global, RATE_WINDOW_S],
        )
        return Admission(verdict)
