"""A whole coding session over MCP, as the bridge runs it, and what it produces."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.autocoder.conftest import AutoCoderServer, call, mcp_client, wait_finished


async def test_rest_api_with_authentication_end_to_end(autocoder: AutoCoderServer, tmp_path: Path) -> None:
    async with mcp_client(autocoder.mcp_url) as s:
        project = await call(s, "create_project", name="Auth API", description="users and tokens")
        started = time.monotonic()
        queued = await call(
            s,
            "execute_coding_task",
            project_id=project["project_id"],
            task="build a REST API with user authentication",
        )
        assert time.monotonic() - started < 2, "execute_coding_task must return before the work is done"
        assert queued["status"] == "queued"
        assert queued["project_id"] == project["project_id"]
        assert queued["agents"] == ["planner", "developer", "tester"]

        details = await wait_finished(s, queued["session_id"])
        assert details["status"] == "succeeded", details
        assert details["progress"] == 100 and details["finished_at"] and details["summary"]
        assert details["agents"] == {"planner": "done", "developer": "done", "tester": "done"}

        events = details["events"]
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        finished = [e["agent"] for e in events if e["agent_status"] == "done"]
        assert finished == ["planner", "developer", "tester"]
        assert events[0]["status"] == "queued" and events[-1]["status"] == "succeeded"
        progress = [e["progress"] for e in events]
        assert progress == sorted(progress)

        results = details["test_results"]
        assert results["passed"] > 0 and results["failed"] == 0 and results["errors"] == 0
        assert results["total"] >= results["passed"]

        # Polling for news only: events after the last one seen.
        later = await call(
            s, "get_session_details", session_id=queued["session_id"], since_event=events[-2]["seq"]
        )
        assert [e["seq"] for e in later["events"]] == [events[-1]["seq"]]

        listing = await call(s, "get_session_files", session_id=queued["session_id"])
    assert listing["session_id"] == queued["session_id"]
    files = {f["path"]: f for f in listing["files"]}
    assert {"PLAN.md", "app/main.py", "app/security.py", "tests/test_api.py", "requirements.txt"} <= set(
        files
    )

    async with httpx.AsyncClient(timeout=10) as http:
        for path, entry in files.items():
            assert entry["name"] == path.rsplit("/", 1)[-1]
            assert entry["expires_at"] > time.time()
            response = await http.get(entry["download_url"])
            assert response.status_code == 200, path
            assert len(response.content) == entry["size"]
            target = tmp_path / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(response.content)
            if path.endswith(".py"):
                compile(response.text, path, "exec")  # real Python

    main = (tmp_path / "app/main.py").read_text()
    assert (
        "/auth/register" in main
        and "/auth/login" in main
        and "Bearer" in (tmp_path / "app/main.py").read_text()
    )

    # The downloaded project's own tests pass here too, not only in AutoCoder's sandbox.
    run = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1", "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert " passed" in run.stdout and "failed" not in run.stdout


async def test_write_tests_for_an_existing_project(autocoder: AutoCoderServer) -> None:
    """'write tests' on a project whose code came from an earlier session tests that code."""
    async with mcp_client(autocoder.mcp_url) as s:
        project = await call(s, "create_project", name="notes")
        first = await call(
            s,
            "execute_coding_task",
            project_id=project["project_id"],
            task="build a notes API",
            agents=["planner", "developer"],
        )
        assert (await wait_finished(s, first["session_id"]))["status"] == "succeeded"
        second = await call(s, "execute_coding_task", project_id=project["project_id"], task="write tests")
        assert second["agents"] == ["planner", "tester"]
        details = await wait_finished(s, second["session_id"])
        files = await call(s, "get_session_files", session_id=second["session_id"])
    assert details["status"] == "succeeded", details
    # health, CRUD round trip, validation: "a notes API" asked for no authentication.
    assert details["test_results"]["passed"] >= 3 and details["test_results"]["failed"] == 0
    assert "tests/test_api.py" in {f["path"] for f in files["files"]}
    assert "app/main.py" not in {f["path"] for f in files["files"]}  # only what this session wrote


async def test_schema_and_dashboard_files_are_real(autocoder: AutoCoderServer) -> None:
    import sqlite3

    async with mcp_client(autocoder.mcp_url) as s:
        project = await call(s, "create_project", name="library")
        queued = await call(
            s,
            "execute_coding_task",
            project_id=project["project_id"],
            task="design a database schema for books and a dashboard",
            agents=["planner", "database", "uiux", "tester"],
        )
        details = await wait_finished(s, queued["session_id"])
        files = {
            f["path"]: f
            for f in (await call(s, "get_session_files", session_id=queued["session_id"]))["files"]
        }
    assert details["status"] == "succeeded", details
    assert details["test_results"]["passed"] >= 4
    async with httpx.AsyncClient(timeout=10) as http:
        schema = (await http.get(files["db/schema.sql"]["download_url"])).text
        html = (await http.get(files["ui/index.html"]["download_url"])).text
    with sqlite3.connect(":memory:") as conn:
        conn.executescript(schema)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"users", "books"} <= tables
    assert "<html" in html and "app.js" in html and "ui/styles.css" in files
