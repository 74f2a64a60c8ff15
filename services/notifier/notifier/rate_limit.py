"""The per-sender send rate (WhatsApp's default throughput is 80 messages/s per sender).

GCRA (the generic cell rate algorithm) in Redis, so every notifier replica draws on the same
allowance: the limit belongs to the sender number at Twilio, not to a process. Each send
*reserves* its slot in one round trip and learns how long to wait for it, then sleeps exactly
that long: no polling, however many recipients wait (a token bucket that answers "not yet"
makes every waiting lane ask again and again — it was the notifier's main CPU cost under load).
The state is one number per sender, the theoretical arrival time (TAT) of the next send, on
Redis's clock (TIME), so replicas with skewed clocks still agree.

Bursts: up to `burst` sends pass at once after an idle spell, then one every 1/rate s; so at
most burst + rate·T sends go out in any T seconds. A reservation cancelled before its send
(shutdown, a lost shard) leaves its slot unused: the rate can only come out lower, never higher.
"""

from __future__ import annotations

import asyncio

from wacoder import keys
from wacoder.redis import Store
from wacoder.settings import Settings

# KEYS[1] the sender's TAT (microseconds, Redis clock). ARGV: interval µs, burst tolerance µs,
# idle ttl ms. Reserves the next slot; returns the microseconds to wait for it (0: send now).
_RESERVE = """
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or 0)
if tat < now then tat = now end
local wait = tat - tolerance - now
if wait < 0 then wait = 0 end
-- Kept while reservations reach into the future (a backlog), and ttl beyond.
local keep = math.floor((tat + interval - now) / 1000) + tonumber(ARGV[3])
redis.call('SET', KEYS[1], string.format('%.0f', tat + interval), 'PX', keep)
return wait
"""


class SendRateLimiter:
    @classmethod
    def from_settings(cls, redis: Store, settings: Settings) -> SendRateLimiter:
        """One number: its own allowance. A Messaging Service: Twilio spreads its messages over
        the pool's senders (sticky per recipient), so the service's allowance is the pool's,
        `TWILIO_MESSAGING_SERVICE_SENDERS` times one sender's."""
        if settings.twilio_messaging_service_sid:
            return cls(
                redis,
                settings.twilio_messaging_service_sid,
                settings.notifier_send_rate_per_s * settings.twilio_messaging_service_senders,
            )
        return cls(redis, settings.twilio_whatsapp_number, settings.notifier_send_rate_per_s)

    def __init__(self, redis: Store, sender: str, rate_per_s: float) -> None:
        self.redis = redis
        self.key = keys.send_rate(sender)
        rate = max(rate_per_s, 0.001)
        # One second's worth of burst: smooth enough for Twilio, no idle capacity wasted.
        burst = max(1.0, rate)
        self.interval_us = round(1_000_000 / rate)
        self.tolerance_us = round((burst - 1) * self.interval_us)
        self._script = redis.register_script(_RESERVE)

    async def acquire(self) -> None:
        """Reserves the next send slot of the shared allowance and waits for it. Raises on Redis
        errors (nothing reserved then)."""
        wait_us = int(
            await self._script(
                keys=[self.key],
                args=[self.interval_us, self.tolerance_us, keys.SEND_RATE_TTL_S * 1000],
            )
        )
        if wait_us > 0:
            await asyncio.sleep(wait_us / 1_000_000)
