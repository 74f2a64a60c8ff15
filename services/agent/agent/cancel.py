"""/cancel [session]: stops a running coding session at AutoCoder (cancel_session, ADR 0002).

The session's progress relay then reports the end once (a "cancelled" summary) and stops."""

from __future__ import annotations

from agent.turn import Turn

CANCEL_USAGE = "/cancel [session id]"


async def cancel(turn: Turn, args: str) -> str:
    if len(args.split()) > 1:
        return f"Usage: {CANCEL_USAGE}"
    session_id = args.strip() or turn.state.last_session
    if session_id is None:
        return "No coding session to cancel. /run <task> starts one."
    result = await turn.autocoder.call(turn.caller, "cancel_session", session_id=session_id)
    status = str(result.get("status", "unknown"))
    if result.get("cancelled"):
        return f"🛑 Cancelled session `{session_id}`; its agents and test run were stopped."
    if status == "cancelled":
        return f"Session `{session_id}` was already cancelled."
    return f"Session `{session_id}` had already ended (*{status}*); nothing to cancel. /files: what it made."
