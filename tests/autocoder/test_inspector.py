"""The official MCP Inspector (CLI mode) can list and call every tool.

Installed by the Makefile with
`npm install --prefix .run/npm --no-audit --no-fund @modelcontextprotocol/inspector`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.autocoder.conftest import AutoCoderServer

REPO = Path(__file__).resolve().parents[2]
INSPECTOR = REPO / ".run" / "npm" / "node_modules" / ".bin" / "mcp-inspector"

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or not INSPECTOR.exists(),
    reason=f"MCP Inspector not installed: needs node and {INSPECTOR} "
    "(npm install --prefix .run/npm @modelcontextprotocol/inspector)",
)


def inspector(server: AutoCoderServer, method: str, tool: str | None = None, **args: str) -> dict[str, Any]:
    argv = [str(INSPECTOR), "--cli", server.mcp_url, "--transport", "http", "--method", method]
    if tool:
        argv += ["--tool-name", tool]
    for key, value in args.items():
        argv += ["--tool-arg", f"{key}={value}"]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def structured(result: dict[str, Any]) -> dict[str, Any]:
    assert not result.get("isError"), result
    return result["structuredContent"]


def test_inspector_lists_and_calls_every_tool(autocoder: AutoCoderServer) -> None:
    with ThreadPoolExecutor(4) as pool:
        listed = pool.submit(inspector, autocoder, "tools/list")
        health = pool.submit(inspector, autocoder, "tools/call", "check_system_health")
        created = pool.submit(
            inspector,
            autocoder,
            "tools/call",
            "create_project",
            name="from-inspector",
            description="made by the MCP Inspector",
        )
        tools = {t["name"] for t in listed.result()["tools"]}
        assert tools >= {
            "create_project",
            "list_projects",
            "execute_coding_task",
            "get_session_details",
            "get_session_files",
            "check_system_health",
            "cancel_session",
        }
        assert structured(health.result())["status"] == "ok"
        project_id = structured(created.result())["project_id"]

    # The Inspector sends no _meta: it is the "anonymous" caller, consistently across calls.
    projects = structured(inspector(autocoder, "tools/call", "list_projects"))["projects"]
    assert project_id in [p["project_id"] for p in projects]
    queued = structured(
        inspector(
            autocoder,
            "tools/call",
            "execute_coding_task",
            project_id=project_id,
            task="plan a todo app",
            agents='["planner"]',
        )
    )
    assert queued["agents"] == ["planner"]
    details = structured(
        inspector(autocoder, "tools/call", "get_session_details", session_id=queued["session_id"])
    )
    assert details["session_id"] == queued["session_id"]
    files = structured(
        inspector(autocoder, "tools/call", "get_session_files", session_id=queued["session_id"])
    )
    assert files["session_id"] == queued["session_id"]
