"""The server process: bearer token on /mcp, health, clean shutdown, restart keeps the index."""

from __future__ import annotations

import httpx
import pytest

from tests.autocoder.conftest import AutoCoderServer, call, mcp_client, wait_finished
from tests.autocoder.test_tools import TOOLS

API_KEY = "test-api-key-5f1d"


async def test_bearer_token_guards_mcp() -> None:
    server = AutoCoderServer(AUTOCODER_API_KEY=API_KEY).start()
    try:
        init = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "0"},
            },
        }
        headers = {"Accept": "application/json, text/event-stream"}
        wrong = {**headers, "Authorization": "Bearer not-the-key"}
        async with httpx.AsyncClient() as http:
            assert (await http.post(server.mcp_url, json=init, headers=headers)).status_code == 401
            assert (await http.post(server.mcp_url, json=init, headers=wrong)).status_code == 401
            assert (await http.get(f"{server.base_url}/health")).status_code == 200  # probes need no token

        with pytest.raises(Exception):  # noqa: B017 - the SDK surfaces the 401 as an exception group
            async with mcp_client(server.mcp_url) as s:
                await s.list_tools()

        async with mcp_client(server.mcp_url, headers={"Authorization": f"Bearer {API_KEY}"}) as s:
            assert {t.name for t in (await s.list_tools()).tools} == set(TOOLS)
            assert (await call(s, "check_system_health"))["status"] == "ok"
    finally:
        assert server.stop() == 0, "SIGTERM must end the server cleanly (exit code 0)"
        server.cleanup()


async def test_restart_keeps_projects_and_sessions() -> None:
    server = AutoCoderServer().start()
    try:
        async with mcp_client(server.mcp_url) as s:
            project = await call(s, "create_project", name="durable")
            queued = await call(
                s, "execute_coding_task", project_id=project["project_id"], task="plan", agents=["planner"]
            )
            await wait_finished(s, queued["session_id"])
        assert server.stop() == 0
        server.start()
        async with mcp_client(server.mcp_url) as s:
            projects = (await call(s, "list_projects"))["projects"]
            assert [p["project_id"] for p in projects] == [project["project_id"]]
            details = await call(s, "get_session_details", session_id=queued["session_id"])
            assert details["status"] == "succeeded"
            files = (await call(s, "get_session_files", session_id=queued["session_id"]))["files"]
            async with httpx.AsyncClient() as http:
                assert (await http.get(files[0]["download_url"])).status_code == 200
    finally:
        server.stop()
        server.cleanup()


async def test_llm_failure_falls_back_to_the_builtin_generators() -> None:
    # An OpenAI-compatible endpoint that refuses connections: every agent must fall back.
    from tests.autocoder.conftest import free_port

    server = AutoCoderServer(
        OPENAI_API_KEY="sk-test", OPENAI_BASE_URL=f"http://127.0.0.1:{free_port()}/v1", LLM_TIMEOUT_S="2"
    )
    server.start()
    try:
        async with mcp_client(server.mcp_url) as s:
            assert (await call(s, "check_system_health"))["llm"] == "openai"
            project = await call(s, "create_project", name="fallback")
            queued = await call(
                s, "execute_coding_task", project_id=project["project_id"], task="plan it", agents=["planner"]
            )
            details = await wait_finished(s, queued["session_id"])
        assert details["status"] == "succeeded"
        assert any("built-in generator" in e["message"] for e in details["events"])
    finally:
        server.stop()
        server.cleanup()
