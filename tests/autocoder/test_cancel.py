"""cancel_session (ADR 0002): a running session stops, ends "cancelled", and its test run (the
sandboxed pytest, and whatever the tests started) is killed; cancelling again is harmless."""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path
from typing import Any

from mcp import ClientSession

from tests.autocoder.conftest import AutoCoderServer, call, call_error, mcp_client, wait_finished

MARKER = f"wacoder-cancel-marker-{secrets.token_hex(6)}"
# A test that starts a process of its own (marked, so the host can find it) and then waits forever.
SLOW_TESTS = f"""import subprocess
import sys
import time


def test_waits_for_ever() -> None:
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", {MARKER!r}])
    time.sleep(600)
"""


def processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if marker.encode() in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def descendants(pid: int) -> set[int]:
    """Live processes below `pid` (the server's test runs: bwrap and the jail, or pytest)."""
    parent_of: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            parent_of[int(entry.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parent_of.items() if parent in frontier} - found
        found |= frontier
    return found


async def wait_until(check: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def slow_project(s: ClientSession, server: AutoCoderServer, name: str) -> str:
    """A project whose tests never end (as if a user's task had asked for them)."""
    project = await call(s, "create_project", name=name)
    tests = server.data_dir / "projects" / project["project_id"] / "tests"
    tests.mkdir(parents=True, exist_ok=True)
    (tests / "test_slow.py").write_text(SLOW_TESTS)
    return str(project["project_id"])


async def test_cancelling_a_running_session_kills_its_test_run(autocoder: AutoCoderServer) -> None:
    assert autocoder.proc is not None
    async with mcp_client(autocoder.mcp_url) as s:
        project_id = await slow_project(s, autocoder, "slow")
        queued = await call(
            s, "execute_coding_task", project_id=project_id, task="run the tests", agents=["tester"]
        )
        session_id = queued["session_id"]
        await wait_until(lambda: processes_with(MARKER), 60, "the tests to start their process")
        assert descendants(autocoder.proc.pid)
        running = await call(s, "get_session_details", session_id=session_id)
        assert running["status"] == "running" and running["agents"]["tester"] == "running"

        started = time.monotonic()
        answer = await call(s, "cancel_session", session_id=session_id)
        assert answer == {"session_id": session_id, "status": "cancelled", "cancelled": True}
        assert time.monotonic() - started < 10
        # When the answer comes, the test run is over: nothing of it is left on the machine.
        assert processes_with(MARKER) == []
        assert descendants(autocoder.proc.pid) == set()

        details = await call(s, "get_session_details", session_id=session_id)
        assert details["status"] == "cancelled" and details["finished_at"]
        assert details["agents"] == {"tester": "skipped"}
        assert details["events"][-1]["message"] == "session cancelled: cancelled at the user's request"
        assert details["events"][-1]["status"] == "cancelled"
        last_seq = details["events"][-1]["seq"]

        # Idempotent: again, the session stays as it is and the answer says it had ended.
        again = await call(s, "cancel_session", session_id=session_id)
        assert again == {"session_id": session_id, "status": "cancelled", "cancelled": False}
        await asyncio.sleep(1)
        later = await call(s, "get_session_details", session_id=session_id, since_event=last_seq)
        assert later["events"] == [] and later["status"] == "cancelled"
        projects = (await call(s, "list_projects"))["projects"]
        assert next(p for p in projects if p["project_id"] == project_id)["status"] == "cancelled"

        # The project is free again: a next session runs.
        (autocoder.data_dir / "projects" / project_id / "tests" / "test_slow.py").unlink()
        nxt = await call(s, "execute_coding_task", project_id=project_id, task="plan", agents=["planner"])
        assert (await wait_finished(s, nxt["session_id"]))["status"] == "succeeded"
    metrics = (await asyncio.to_thread(lambda: autocoder_metrics(autocoder))).splitlines()
    assert any(line.startswith('autocoder_sessions_finished_total{status="cancelled"} ') for line in metrics)


def autocoder_metrics(server: AutoCoderServer) -> str:
    import httpx

    return httpx.get(f"http://127.0.0.1:{server.env['AUTOCODER_METRICS_PORT']}/metrics").text


async def test_a_queued_session_can_be_cancelled_before_it_runs(autocoder: AutoCoderServer) -> None:
    async with mcp_client(autocoder.mcp_url) as s:
        project_id = await slow_project(s, autocoder, "queue")
        first = await call(s, "execute_coding_task", project_id=project_id, task="tests", agents=["tester"])
        # Sessions of one project run one at a time: this one waits for the first.
        second = await call(s, "execute_coding_task", project_id=project_id, task="plan", agents=["planner"])
        await asyncio.sleep(0.5)
        assert (await call(s, "get_session_details", session_id=second["session_id"]))["status"] == "queued"
        answer = await call(s, "cancel_session", session_id=second["session_id"])
        assert answer["status"] == "cancelled" and answer["cancelled"] is True
        details = await call(s, "get_session_details", session_id=second["session_id"])
        assert details["agents"] == {"planner": "skipped"}
        assert (await call(s, "cancel_session", session_id=first["session_id"]))["cancelled"] is True


async def test_an_ended_session_says_how_it_ended(autocoder: AutoCoderServer) -> None:
    async with mcp_client(autocoder.mcp_url) as s:
        project = await call(s, "create_project", name="done")
        queued = await call(
            s, "execute_coding_task", project_id=project["project_id"], task="plan", agents=["planner"]
        )
        await wait_finished(s, queued["session_id"])
        answer = await call(s, "cancel_session", session_id=queued["session_id"])
        assert answer == {"session_id": queued["session_id"], "status": "succeeded", "cancelled": False}


async def test_only_the_owner_can_cancel(autocoder: AutoCoderServer) -> None:
    async with mcp_client(autocoder.mcp_url) as s:
        project = await call(s, "create_project", name="mine")
        queued = await call(
            s, "execute_coding_task", project_id=project["project_id"], task="plan", agents=["planner"]
        )
        error = await call_error(s, "cancel_session", caller="caller-z", session_id=queued["session_id"])
        assert "session not found" in error
        assert "session not found" in await call_error(s, "cancel_session", session_id="sess_nope")
        tools = {t.name: t for t in (await s.list_tools()).tools}
        assert tools["cancel_session"].annotations is not None
        assert tools["cancel_session"].annotations.idempotentHint is True
