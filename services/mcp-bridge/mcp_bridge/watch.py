"""WatchSession: follows one coding session by polling get_session_details and turns its
events into a stream, ending with a final event once the session has ended (succeeded, failed
or cancelled).

Polling (not server push) because AutoCoder's tools are request/response; since_event keeps
each poll to the new events only. An AutoCoder blip does not end the stream: polls keep going
through the breaker with backoff, and only an outage longer than max_outage_s ends it with
UNAVAILABLE (the client resumes with after_event = the last seq it received).

The stream's initial metadata is sent after the first poll that reached AutoCoder (`on_contact`):
a watcher learns that the way to AutoCoder works again even while the session is quiet.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from wacoder.v1 import bridge_pb2
from wacoder.waiting import wait_event

from mcp_bridge.cache import ENDED_STATUSES, ResultCache
from mcp_bridge.tool_calls import BreakerOpen, CallTimeout, ToolCaller, Unavailable

log = logging.getLogger("mcp_bridge.watch")

_MAX_BACKOFF_S = 5.0
# Event fields that have a place of their own in SessionEvent; the rest goes to detail_json.
_EVENT_FIELDS = {"seq", "status", "agent", "agent_status", "message", "progress"}


class SessionNotFound(Exception):
    """The session does not exist or belongs to somebody else (AutoCoder does not say which)."""


class WatchOutage(Exception):
    """AutoCoder stayed unreachable for longer than the watch waits."""


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def event_message(session_id: str, event: dict[str, Any]) -> bridge_pb2.SessionEvent:
    return bridge_pb2.SessionEvent(
        session_id=session_id,
        seq=_int(event.get("seq")),
        status=str(event.get("status") or ""),
        agent=str(event.get("agent") or ""),
        agent_status=str(event.get("agent_status") or ""),
        message=str(event.get("message") or ""),
        progress=_int(event.get("progress")),
        detail_json=json.dumps({k: v for k, v in event.items() if k not in _EVENT_FIELDS}),
    )


def final_message(session_id: str, details: dict[str, Any], last_seq: int) -> bridge_pb2.SessionEvent:
    """The end marker. It carries the seq of the last real event (it is not a new event, so
    resuming after it yields nothing new), and in detail_json everything the server reported
    about the session except the event list: test_results, summary, agents, times."""
    return bridge_pb2.SessionEvent(
        session_id=session_id,
        seq=last_seq,
        status=str(details.get("status") or ""),
        message=str(details.get("summary") or ""),
        progress=_int(details.get("progress")),
        final=True,
        detail_json=json.dumps({k: v for k, v in details.items() if k != "events"}),
    )


async def watch_session(
    tools: ToolCaller,
    cache: ResultCache,
    session_id: str,
    caller: str,
    after_event: int,
    *,
    poll_interval_s: float,
    max_outage_s: float,
    stopping: asyncio.Event,
    on_contact: Callable[[], Awaitable[None]] | None = None,
) -> AsyncIterator[bridge_pb2.SessionEvent]:
    last_seq = max(0, after_event)
    last_contact = time.monotonic()
    backoff = poll_interval_s
    while not stopping.is_set():
        try:
            arguments = {"session_id": session_id, "since_event": last_seq}
            outcome = await tools.call("get_session_details", arguments, caller)
        except (BreakerOpen, Unavailable, CallTimeout) as exc:
            if time.monotonic() - last_contact > max_outage_s:
                raise WatchOutage(
                    f"AutoCoder unavailable for over {max_outage_s:g} s while watching the "
                    f"session ({exc}); resume with after_event={last_seq}"
                ) from exc
            log.info("watch poll failed, backing off", extra={"session_id": session_id, "error": str(exc)})
            await wait_event(stopping, backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF_S)
            continue
        if outcome.is_error:
            raise SessionNotFound(outcome.error_message)
        if on_contact is not None:
            await on_contact()
            on_contact = None
        last_contact = time.monotonic()
        backoff = poll_interval_s
        details = outcome.result if isinstance(outcome.result, dict) else {}
        events = [e for e in details.get("events") or [] if isinstance(e, dict)]
        for event in sorted(events, key=lambda e: _int(e.get("seq"))):
            seq = _int(event.get("seq"))
            if seq <= last_seq:  # a server that ignores since_event must not cause repeats
                continue
            last_seq = seq
            yield event_message(session_id, event)
        if details.get("status") in ENDED_STATUSES:
            await cache.note_session_status(caller, session_id, details.get("status"))
            yield final_message(session_id, details, last_seq)
            return
        await wait_event(stopping, poll_interval_s)  # wakes at once when the bridge shuts down
    raise WatchOutage(f"mcp-bridge is shutting down; resume with after_event={last_seq}")
