"""The per-sender send rate (WhatsApp's default throughput is 80 messages/s per sender).

A token bucket in Redis, so that every notifier replica draws from the same bucket: the limit
belongs to the sender number at Twilio, not to a process. One round trip per send; the
bucket's clock is Redis's (TIME), so replicas with skewed clocks still agree.
"""

from __future__ import annotations

import asyncio

from wacoder import keys
from wacoder.redis import Store

# KEYS[1] bucket hash; ARGV rate per second, burst, ttl (s). Returns 0 when a token was taken, else the
# milliseconds until one will be there.
_TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tokens = tonumber(redis.call('HGET', KEYS[1], 'tokens'))
local ts = tonumber(redis.call('HGET', KEYS[1], 'ts'))
if not tokens or not ts then tokens = burst; ts = now end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return wait
"""


class SendRateLimiter:
    def __init__(self, redis: Store, sender: str, rate_per_s: float) -> None:
        self.redis = redis
        self.key = keys.send_rate(sender)
        self.rate = max(rate_per_s, 0.001)
        # One second's worth of burst: smooth enough for Twilio, no idle capacity wasted.
        self.burst = max(1.0, self.rate)
        self._script = redis.register_script(_TAKE)

    async def acquire(self) -> None:
        """Waits until the shared bucket hands out a token. Raises on Redis errors."""
        while True:
            wait_ms = int(
                await self._script(keys=[self.key], args=[self.rate, self.burst, keys.SEND_RATE_TTL_S])
            )
            if wait_ms <= 0:
                return
            await asyncio.sleep(wait_ms / 1000)
