"""The store on disk: a snapshot plus a journal that survive restarts, crashes and torn writes,
and per-event writes that cost a line instead of a rewrite of everything."""

from __future__ import annotations

import json
import signal
from typing import Any

from mcp import ClientSession

from tests.autocoder.conftest import AutoCoderServer, call, mcp_client, wait_finished

CALLERS = ("persist-a", "persist-b")


async def everything(s: ClientSession) -> dict[str, Any]:
    """All the callers' projects with their sessions' details, as the tools report them."""
    state: dict[str, Any] = {}
    for caller in CALLERS:
        projects = (await call(s, "list_projects", caller=caller))["projects"]
        state[caller] = projects
        for project in projects:
            for session_id in project["sessions"]:
                state[session_id] = await call(s, "get_session_details", caller=caller, session_id=session_id)
    return state


async def populate(s: ClientSession, tag: str) -> dict[str, dict[str, Any]]:
    """Projects and finished sessions for both callers, created with idempotency keys."""
    made: dict[str, dict[str, Any]] = {}
    for caller in CALLERS:
        for i in range(2):
            key = f"SM{tag}{caller}{i}:create_project:0"
            project = await call(s, "create_project", caller=caller, name=f"{tag}-{i}", idempotency_key=key)
            made[key] = project
            key = f"SM{tag}{caller}{i}:execute_coding_task:0"
            queued = await call(
                s,
                "execute_coding_task",
                caller=caller,
                project_id=project["project_id"],
                task="plan it",
                agents=["planner"],
                idempotency_key=key,
            )
            made[key] = queued
            await wait_finished(s, queued["session_id"], caller=caller)
    return made


async def repeat_keys(s: ClientSession, made: dict[str, dict[str, Any]]) -> None:
    """Every key still answers with what it created (nothing new is made)."""
    for key, first in made.items():
        caller = next(c for c in CALLERS if c in key)
        if "create_project" in key:
            again = await call(s, "create_project", caller=caller, name="again", idempotency_key=key)
        else:
            again = await call(
                s,
                "execute_coding_task",
                caller=caller,
                project_id=first["project_id"],
                task="again",
                idempotency_key=key,
            )
        assert again == first, key


async def test_a_restart_keeps_projects_sessions_events_and_keys() -> None:
    # A small journal limit: compactions happen while the test runs, not only at start.
    server = AutoCoderServer(AUTOCODER_JOURNAL_MAX_RECORDS="7").start()
    try:
        async with mcp_client(server.mcp_url) as s:
            made = await populate(s, "first")
            before = await everything(s)
        assert server.stop() == 0
        assert "store compacted" in server.log_path.read_text()
        server.start()
        async with mcp_client(server.mcp_url) as s:
            assert await everything(s) == before
            await repeat_keys(s, made)
            assert await everything(s) == before  # the repeats created nothing
            # It goes on: more of everything, and another restart keeps that too.
            made |= await populate(s, "second")
            before = await everything(s)
        assert server.stop() == 0
        server.start()
        async with mcp_client(server.mcp_url) as s:
            assert await everything(s) == before
            await repeat_keys(s, made)
    finally:
        server.stop()
        server.cleanup()


async def test_a_crash_with_a_torn_journal_line_keeps_everything_before_it() -> None:
    server = AutoCoderServer().start()
    journal = server.data_dir / "journal.jsonl"
    try:
        async with mcp_client(server.mcp_url) as s:
            made = await populate(s, "crash")
            before = await everything(s)
            size = journal.stat().st_size
            await call(s, "create_project", caller=CALLERS[0], name="torn", idempotency_key="SMtorn")
        # Killed mid-write: the process is gone, and the last line only half written.
        assert server.proc is not None
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(10)
        last = journal.read_bytes()[size:]
        assert last.count(b"\n") == 1 and b'"torn"' in last, "the project is the journal's last line"
        with journal.open("r+b") as fh:
            fh.truncate(size + len(last) // 2)

        server.start()
        async with mcp_client(server.mcp_url) as s:
            assert await everything(s) == before  # all of it, and no trace of the torn record
            await repeat_keys(s, made)
            # The torn tail did not poison what comes after it.
            retry = await call(s, "create_project", caller=CALLERS[0], name="torn", idempotency_key="SMtorn")
            after = await everything(s)
        assert [p["name"] for p in after[CALLERS[0]]].count("torn") == 1
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(10)
        server.start()
        async with mcp_client(server.mcp_url) as s:
            assert await everything(s) == after
            again = await call(s, "create_project", caller=CALLERS[0], name="x", idempotency_key="SMtorn")
            assert again == retry
    finally:
        server.stop()
        server.cleanup()


def big_index(sessions: int, events: int) -> dict[str, Any]:
    """An index.json as the previous versions wrote it (no journal), of someone else's history."""
    ts = "2026-01-01T00:00:00.000Z"
    ids = [f"sess_{i:016x}" for i in range(sessions)]
    message = "developer done: the FastAPI application under app/, requirements.txt, README.md " * 2
    return {
        "projects": [
            {
                "project_id": "proj_0000000000",
                "owner": "someone-else",
                "name": "big",
                "description": "",
                "created_at": ts,
                "sessions": ids,
                "spec": None,
            }
        ],
        "sessions": [
            {
                "session_id": sid,
                "project_id": "proj_0000000000",
                "owner": "someone-else",
                "task": "build a REST API with user authentication",
                "agents": ["planner", "developer"],
                "agent_status": {"planner": "done", "developer": "done"},
                "status": "succeeded",
                "progress": 100,
                "events": [
                    {
                        "seq": k + 1,
                        "ts": ts,
                        "status": "running",
                        "agent": "developer",
                        "agent_status": "done",
                        "message": message,
                        "progress": 50,
                    }
                    for k in range(events)
                ],
                "test_results": None,
                "summary": "done",
                "files": ["PLAN.md", "app/main.py"],
                "created_at": ts,
                "finished_at": ts,
            }
            for sid in ids
        ],
    }


async def test_on_a_big_store_an_event_costs_a_line_not_a_rewrite() -> None:
    server = AutoCoderServer()
    (server.data_dir / "index.json").write_text(json.dumps(big_index(sessions=1500, events=20)))
    server.start()
    journal = server.data_dir / "journal.jsonl"
    snapshot = server.data_dir / "index.json"
    try:
        async with mcp_client(server.mcp_url) as s:
            # The previous format loads; then warm up (first calls import and build schemas).
            big = await call(s, "get_session_details", caller="someone-else", session_id="sess_" + "0" * 16)
            assert big["status"] == "succeeded" and len(big["events"]) == 20
            await call(s, "check_system_health")
            snapshot_stat = snapshot.stat()
            journal_size = journal.stat().st_size if journal.exists() else 0

            project = await call(s, "create_project", name="on a big store", idempotency_key="SMbig")
            queued = await call(
                s,
                "execute_coding_task",
                project_id=project["project_id"],
                task="build a notes API",
                idempotency_key="SMbig:run",
            )
            details = await wait_finished(s, queued["session_id"], timeout_s=90)
            assert details["status"] == "succeeded", details
            files = await call(s, "get_session_files", session_id=queued["session_id"])
            assert files["files"]
            await call(s, "list_projects")

        # (How long the loop is held is a speed figure: it belongs in a benchmark, not here.)
        # Persistence: the snapshot was not touched, the journal grew by a line per change.
        assert snapshot.stat().st_mtime_ns == snapshot_stat.st_mtime_ns
        assert snapshot.stat().st_size == snapshot_stat.st_size
        lines = journal.read_bytes()[journal_size:].splitlines()
        # The project, the session, the developer's spec, the session's events.
        assert len(lines) == 3 + len(details["events"])
        assert snapshot_stat.st_size > 5_000_000 and max(len(line) for line in lines) < 4000
    finally:
        server.stop()
        server.cleanup()
