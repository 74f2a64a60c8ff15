"""A small AutoCoder MCP server for the bridge's tests: a real FastMCP streamable-HTTP server,
run as its own process so a test can stop it, restart it on the same port, or make it slow.

It speaks the six AutoCoder tools with the reference server's shapes, scopes everything by the
`caller` in each request's `_meta` (as AutoCoder does), and counts the calls it receives on
`GET /_fake/stats` so a test can prove a call never reached it (breaker open). A coding
session advances with wall-clock time: one event every SESSION_STEP_S seconds, then ends.

    python -m tests.bridge.fake_autocoder --port 8765 [--state state.json] [--step-seconds 0.35]

With --state, projects, sessions and a log of every call survive a restart (so a test can
stop AutoCoder in the middle of a session). `POST /_fake/crash_on?tool=NAME` makes the next
call of that tool kill the process after it was received: a request that reached AutoCoder
whose answer never came back; with `&when=after`, after it did its work (and saved it).

create_project and execute_coding_task honour `idempotency_key` as AutoCoder does (ADR 0002):
a repeat from the same caller returns the first result and creates nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from mcp.server.fastmcp import Context, FastMCP
from mcp.server.fastmcp.exceptions import ToolError
from mcp.types import ToolAnnotations
from starlette.requests import Request
from starlette.responses import JSONResponse

SESSION_STEPS: list[tuple[str, str, str, str, int]] = [
    # (session status, agent, agent status, message, progress)
    ("running", "planner", "running", "planning the work", 10),
    ("running", "planner", "done", "plan ready", 25),
    ("running", "developer", "running", "writing code", 45),
    ("running", "developer", "done", "code written", 65),
    ("running", "tester", "running", "running tests", 85),
    ("succeeded", "tester", "done", "all tests passed", 100),
]
SESSION_STEP_S = 0.35
step_s = SESSION_STEP_S

mcp = FastMCP("fake-autocoder")
calls: Counter[str] = Counter()
metas: list[dict[str, Any]] = []
auth_headers: list[str] = []
projects: dict[str, dict[str, Any]] = {}
sessions: dict[str, dict[str, Any]] = {}
call_log: list[str] = []
started = time.monotonic()
state_path: Path | None = None
crash_on: set[tuple[str, str]] = set()  # (tool, "before" | "after" its work)
idempotency: dict[str, dict[str, Any]] = {}  # "caller tool key" -> the first result


def _save() -> None:
    if state_path is not None:
        state = {"projects": projects, "sessions": sessions, "call_log": call_log, "idempotency": idempotency}
        state_path.write_text(json.dumps(state))


def _load() -> None:
    if state_path is not None and state_path.exists():
        state = json.loads(state_path.read_text())
        projects.update(state["projects"])
        sessions.update(state["sessions"])
        call_log.extend(state["call_log"])
        idempotency.update(state.get("idempotency", {}))


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _caller(ctx: Context) -> str:  # type: ignore[type-arg]
    """Counts the call and returns who made it, the way AutoCoder scopes its data."""
    request_context = ctx.request_context
    meta = request_context.meta.model_dump() if request_context.meta is not None else {}
    metas.append(meta)
    request = request_context.request
    if request is not None:
        auth_headers.append(request.headers.get("authorization", ""))
    caller = meta.get("caller")
    if not caller:
        raise ToolError("caller missing from _meta")
    return str(caller)


def _count(tool: str) -> None:
    calls[tool] += 1
    calls["_total"] += 1
    call_log.append(tool)
    _save()
    _maybe_crash(tool, "before")


def _maybe_crash(tool: str, when: str) -> None:
    if (tool, when) in crash_on:
        os._exit(3)


def _remembered(caller: str, tool: str, key: str | None) -> dict[str, Any] | None:
    return idempotency.get(f"{caller} {tool} {key}") if key else None


def _remember(caller: str, tool: str, key: str | None, result: dict[str, Any]) -> None:
    if key:
        idempotency[f"{caller} {tool} {key}"] = result


def _owned_session(session_id: str, caller: str) -> dict[str, Any]:
    session = sessions.get(session_id)
    if session is None or session["caller"] != caller:
        raise ToolError(f"session {session_id} not found")
    return session


@mcp.tool()
def create_project(
    name: str,
    ctx: Context,  # type: ignore[type-arg]
    description: str = "",
    idempotency_key: str | None = None,
) -> dict[str, Any]:
    """Create a new project."""
    _count("create_project")
    caller = _caller(ctx)
    first = _remembered(caller, "create_project", idempotency_key)
    if first is not None:
        return first
    project = {
        "project_id": uuid.uuid4().hex[:12],
        "name": name,
        "description": description,
        "created_at": _now(),
    }
    projects[project["project_id"]] = {**project, "caller": caller}
    _remember(caller, "create_project", idempotency_key, project)
    _save()
    _maybe_crash("create_project", "after")
    return project


@mcp.tool()
def list_projects(ctx: Context) -> dict[str, Any]:  # type: ignore[type-arg]
    """List the caller's projects."""
    _count("list_projects")
    caller = _caller(ctx)
    mine = [{k: v for k, v in p.items() if k != "caller"} for p in projects.values() if p["caller"] == caller]
    return {"projects": mine}


@mcp.tool()
def execute_coding_task(
    project_id: str,
    task: str,
    ctx: Context,  # type: ignore[type-arg]
    agents: list[str] | None = None,
    idempotency_key: str | None = None,
) -> dict[str, Any]:
    """Start a coding session on a project."""
    _count("execute_coding_task")
    caller = _caller(ctx)
    first = _remembered(caller, "execute_coding_task", idempotency_key)
    if first is not None:
        return first
    project = projects.get(project_id)
    if project is None or project["caller"] != caller:
        raise ToolError(f"project {project_id} not found")
    session_id = uuid.uuid4().hex[:12]
    agents = agents or ["planner", "developer", "tester"]
    sessions[session_id] = {
        "caller": caller,
        "project_id": project_id,
        "task": task,
        "agents": agents,
        "started": time.time(),
        "created_at": _now(),
    }
    queued = {"session_id": session_id, "project_id": project_id, "status": "queued", "agents": agents}
    _remember(caller, "execute_coding_task", idempotency_key, queued)
    _save()
    _maybe_crash("execute_coding_task", "after")
    return queued


def _events(session: dict[str, Any]) -> list[dict[str, Any]]:
    steps = int((time.time() - session["started"]) / step_s)
    return [
        {
            "seq": i + 1,
            "ts": _now(),
            "status": status,
            "agent": agent,
            "agent_status": agent_status,
            "message": message,
            "progress": progress,
        }
        for i, (status, agent, agent_status, message, progress) in enumerate(SESSION_STEPS[:steps])
    ]


@mcp.tool()
def get_session_details(session_id: str, ctx: Context, since_event: int = 0) -> dict[str, Any]:  # type: ignore[type-arg]
    """Status and new events of a coding session."""
    _count("get_session_details")
    session = _owned_session(session_id, _caller(ctx))
    events = _events(session)
    last = events[-1] if events else None
    status = last["status"] if last else "queued"
    ended = status in ("succeeded", "failed")
    agents = {e["agent"]: e["agent_status"] for e in events}
    return {
        "session_id": session_id,
        "project_id": session["project_id"],
        "task": session["task"],
        "status": status,
        "progress": last["progress"] if last else 0,
        "agents": agents,
        "events": [e for e in events if e["seq"] > since_event],
        "test_results": {"passed": 3, "failed": 0, "errors": 0, "total": 3, "output_tail": "3 passed"}
        if ended
        else None,
        "summary": "built it" if ended else "",
        "created_at": session["created_at"],
        "finished_at": _now() if ended else None,
    }


@mcp.tool()
def get_session_files(session_id: str, ctx: Context) -> dict[str, Any]:  # type: ignore[type-arg]
    """The files a coding session produced."""
    _count("get_session_files")
    _owned_session(session_id, _caller(ctx))
    expires = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    return {
        "session_id": session_id,
        "files": [
            {
                "name": "app.py",
                "path": "app.py",
                "size": 42,
                "download_url": f"http://fake/{session_id}/app.py",
                "expires_at": expires,
            }
        ],
    }


@mcp.tool()
def check_system_health(ctx: Context) -> dict[str, Any]:  # type: ignore[type-arg]
    """Health of the AutoCoder platform."""
    _count("check_system_health")
    _caller(ctx)
    return {
        "status": "healthy",
        "version": "fake-1",
        "agents": {},
        "llm": "offline",
        "active_sessions": len(sessions),
        "uptime_s": round(time.monotonic() - started, 1),
    }


@mcp.tool()
def append_note(text: str, ctx: Context) -> dict[str, Any]:  # type: ignore[type-arg]
    """A write that knows no idempotency_key (as an older AutoCoder's tools): it ignores one."""
    _count("append_note")
    _caller(ctx)
    _maybe_crash("append_note", "after")
    return {"text": text}


@mcp.tool(annotations=ToolAnnotations(readOnlyHint=True))
async def slow_tool(seconds: float, ctx: Context) -> dict[str, Any]:  # type: ignore[type-arg]
    """Sleeps, to exercise the bridge's call timeout."""
    _count("slow_tool")
    _caller(ctx)
    await asyncio.sleep(seconds)
    return {"slept": seconds}


@mcp.custom_route("/_fake/stats", methods=["GET"])
async def stats(_: Request) -> JSONResponse:
    return JSONResponse(
        {"calls": dict(calls), "metas": metas[-50:], "auth": auth_headers[-50:], "call_log": call_log}
    )


@mcp.custom_route("/_fake/crash_on", methods=["POST"])
async def set_crash_on(request: Request) -> JSONResponse:
    crash_on.add((request.query_params["tool"], request.query_params.get("when", "before")))
    return JSONResponse({"crash_on": sorted(crash_on)})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state", type=Path)
    parser.add_argument("--step-seconds", type=float, default=SESSION_STEP_S)
    args = parser.parse_args()
    global state_path, step_s
    state_path = args.state
    step_s = args.step_seconds
    _load()
    mcp.settings.host = "127.0.0.1"
    mcp.settings.port = args.port
    mcp.settings.log_level = "WARNING"
    mcp.run(transport="streamable-http")


if __name__ == "__main__":
    main()
