"""Waiting that a cancellation always interrupts.

Python 3.11's `asyncio.wait_for` swallows a cancellation that arrives as the awaited thing
finishes (CPython gh-86296, fixed in 3.12): a loop built on it then outlives its `cancel()`
and whoever awaits the task hangs, as a stopping service or a test teardown does. The code
here uses `asyncio.timeout` instead, which hands the cancellation on.
"""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Waits up to `seconds` for `event`; True when it was set, False on timeout. The usual
    "sleep, but wake at once on shutdown"."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True
