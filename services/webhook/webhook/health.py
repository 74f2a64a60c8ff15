"""GET /health: 200 only while Redis and the three gRPC services all answer."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import grpc
from wacoder.grpc import check_health
from wacoder.redis import Store, ping


async def check_all(redis: Store, channels: Mapping[str, grpc.aio.Channel]) -> dict[str, bool]:
    names = ["redis", *channels]
    results = await asyncio.gather(ping(redis), *(check_health(c) for c in channels.values()))
    return dict(zip(names, results, strict=True))
