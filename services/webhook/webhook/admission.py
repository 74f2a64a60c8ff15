"""Who gets in, in one Redis round trip per message.

A whitelisted sender: one script in the user's slot spots a Twilio replay (MessageSid already
accepted), counts the per-phone limit and opens the user's 24-hour window; at the same time
(concurrently, so still one round trip) the global counter, in a slot of its own, counts the
message. A stranger: one script counts them against the strangers' limit. Either way a refusal
the user hears about (a paid message) is said at most once per window: the rate-limit notice
once per rate window, the not-authorized notice once an hour per number.

The global limit holds across shards (docs/adr/0007-scale-out.md): a fixed window of
RATE_WINDOW_S by the clock, one counter per window (`keys.rate_limit_global(<window start>)`).
Every message is counted in the window it arrived in, and one the user's script refused (a
replay, or over the per-phone limit) is counted back in that same window, however late the
count-back comes: a refusal never lends the next window a place. So a window's counter is never
below the messages it admitted, and no window admits more than the limit; it runs ahead by the
refusals whose counting-back is still in flight (or, if a webhook dies between the two, until
that window ends).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from enum import StrEnum

from redis.exceptions import RedisError
from wacoder import keys, probe
from wacoder.botconfig import BotConfigSource
from wacoder.phones import phone_hash
from wacoder.redis import Store

RATE_WINDOW_S = 60

# KEYS (the user's slot): seen mark, per-phone counter, rate-limit notice, last-inbound mark.
# ARGV: per-phone limit, window, 24-hour window.
# A replay is not counted against the limits: Twilio retrying is not the user typing.
_ADMIT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 'duplicate' end
local phone = redis.call('INCR', KEYS[2])
if phone == 1 then redis.call('EXPIRE', KEYS[2], ARGV[2]) end
if phone > tonumber(ARGV[1]) then
  if redis.call('SET', KEYS[3], '1', 'NX', 'EX', ARGV[2]) then return 'rate_limited' end
  return 'rate_limited_quiet'
end
redis.call('SET', KEYS[4], '1', 'EX', ARGV[3])
return 'ok'
"""

# KEYS: one window's global counter. ARGV: its lifetime. Returns the count including this message.
_COUNT = """
local all = redis.call('INCR', KEYS[1])
if all == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return all
"""
# KEYS: the global counter of the window the message was counted in. Counts it back; a key
# already expired (a count-back a whole window late) is not re-created without its expiry.
_UNCOUNT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('DECR', KEYS[1]) end
return 0
"""
# A window's counter outlives its window by another one: a late count-back still finds it (and
# changes only a window that is over), and no webhook's clock, a little behind, re-creates it.
_GLOBAL_KEY_TTL_S = 2 * RATE_WINDOW_S


def window_start(now: float) -> int:
    """The start (epoch seconds) of the global limit's fixed window that `now` falls in."""
    return int(now // RATE_WINDOW_S) * RATE_WINDOW_S


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
    def __init__(
        self,
        redis: Store,
        config: BotConfigSource,
        hash_salt: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.config = config
        self.hash_salt = hash_salt
        self.clock = clock  # epoch seconds: every webhook names the same window by its clock
        self._admit = redis.register_script(_ADMIT)
        self._count = redis.register_script(_COUNT)
        self._uncount = redis.register_script(_UNCOUNT)
        self._stranger = redis.register_script(_STRANGER)

    async def admit(self, phone: str, message_sid: str) -> Admission:
        """Raises redis errors for a whitelisted sender: the caller answers 503 so Twilio retries."""
        config = self.config.current
        user = phone_hash(phone, self.hash_salt)
        # The operator's promotion probe is let in as a whitelisted sender would be (wacoder.probe).
        if not (config.is_allowed(phone) or probe.is_probe(phone)):
            return await self._refuse_stranger(user, config.global_per_minute)
        notice = keys.refusal_notice("rate_limit", user)
        # The window is read once: the count-back below goes to the counter that counted.
        everybody_key = keys.rate_limit_global(window_start(self.clock()))
        verdict, everybody = await asyncio.gather(
            self._admit(
                keys=[
                    keys.inbound_seen(user, message_sid),
                    keys.rate_limit(user),
                    notice,
                    keys.last_inbound(user),
                ],
                args=[config.per_phone_per_minute, RATE_WINDOW_S, keys.WINDOW_S],
            ),
            self._count(keys=[everybody_key], args=[_GLOBAL_KEY_TTL_S]),
        )
        if verdict != Admission.OK:
            await self._uncount(keys=[everybody_key])  # not admitted: counted back, in its window
            return Admission(verdict)
        if int(everybody) > config.global_per_minute:
            told = await self.redis.set(notice, "1", nx=True, ex=RATE_WINDOW_S)
            return Admission.RATE_LIMITED if told else Admission.RATE_LIMITED_QUIET
        return Admission.OK

    async def _refuse_stranger(self, user: str, limit: int) -> Admission:
        try:
            verdict = await self._stranger(
                keys=[keys.RATE_LIMIT_STRANGERS, keys.refusal_notice("unauthorized", user)],
                args=[limit, RATE_WINDOW_S, keys.UNAUTHORIZED_NOTICE_TTL_S],
            )
        except RedisError:
            return Admission.UNAUTHORIZED_QUIET  # nothing to lose: a stranger's message is not kept
        return Admission(verdict)
