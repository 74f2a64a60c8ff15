"""wacoder.waiting: a wait that a cancellation always interrupts. The loops of the leases, the
stream consumers and the notifier sleep through it; one that swallowed its cancel would never
end, and whoever stops it would hang (it did: a lease test's teardown, in CI)."""

from __future__ import annotations

import asyncio

import pytest
from wacoder.waiting import wait_event


async def test_a_cancel_that_arrives_as_the_event_is_set_still_cancels() -> None:
    event = asyncio.Event()
    waiting = asyncio.create_task(wait_event(event, 10))
    await asyncio.sleep(0)  # it waits
    event.set()
    waiting.cancel()  # in the same turn of the loop: the race asyncio.wait_for loses on 3.11

    with pytest.raises(asyncio.CancelledError):
        await waiting


async def test_it_tells_a_set_event_from_a_timeout() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    event.set()
    assert await wait_event(event, 10) is True
