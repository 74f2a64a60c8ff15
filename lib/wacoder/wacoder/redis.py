"""The Redis connection every service uses (one pool per process)."""

from __future__ import annotations

import redis.asyncio as aioredis

from wacoder.settings import Settings


def connect(settings: Settings) -> aioredis.Redis:
    """A client with its own pool; decode_responses so callers deal in str, not bytes.

    Short socket timeouts: a Redis that stopped answering must turn into an error the caller
    can act on (a 503, a retry) within a second or two, not a hung request.
    """
    return aioredis.from_url(
        settings.redis_url,
        decode_responses=True,
        socket_connect_timeout=2.0,
        socket_timeout=5.0,
        health_check_interval=15,
    )


async def ping(client: aioredis.Redis) -> bool:
    try:
        return bool(await client.ping())
    except Exception:
        return False
