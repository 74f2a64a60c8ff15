"""The six tools over real MCP: schemas, ownership, agent selection."""

from __future__ import annotations

import pytest

from tests.autocoder.conftest import AutoCoderServer, call, call_error, mcp_client, wait_finished

TOOLS = {
    "create_project": {"name"},
    "list_projects": set(),
    "execute_coding_task": {"project_id", "task"},
    "get_session_details": {"session_id"},
    "get_session_files": {"session_id"},
    "check_system_health": set(),
    "share_project": {"project_id", "member"},
    "unshare_project": {"project_id", "member"},
    "cancel_session": {"session_id"},
}


async def test_tools_list_returns_every_tool_with_its_schema(autocoder: AutoCoderServer) -> None:
    async with mcp_client(autocoder.mcp_url) as s:
        tools = {t.name: t for t in (await s.list_tools()).tools}
    assert set(tools) == set(TOOLS)
    for name, required in TOOLS.items():
        tool = tools[name]
        assert tool.description
        assert set(tool.inputSchema.get("required", [])) == required, name
        # Structured output everywhere: an object schema, never a bare list.
        assert tool.outputSchema is not None and tool.outputSchema["type"] == "object", name
    assert set(tools["create_project"].inputSchema["properties"]) == {
        "name",
        "description",
        "idempotency_key",
    }
    assert set(tools["execute_coding_task"].inputSchema["properties"]) == {
        "project_id",
        "task",
        "agents",
        "idempotency_key",
        "design_reference",  # images the UI/UX agent follows (ADR 0002)
    }
    assert set(tools["get_session_details"].inputSchema["properties"]) == {"session_id", "since_event"}
    assert set(tools["get_session_details"].outputSchema["properties"]) == {
        "session_id",
        "project_id",
        "task",
        "status",
        "progress",
        "agents",
        "events",
        "test_results",
        "summary",
        "created_at",
        "finished_at",
    }


async def test_health(autocoder: AutoCoderServer) -> None:
    async with mcp_client(autocoder.mcp_url) as s:
        health = await call(s, "check_system_health")
    assert health["status"] == "ok"
    assert health["agents"] == ["planner", "database", "developer", "uiux", "devops", "tester"]
    assert health["llm"] == "builtin"
    assert health["uptime_s"] >= 0 and health["active_sessions"] >= 0


async def test_projects_are_scoped_to_their_caller(autocoder: AutoCoderServer) -> None:
    async with mcp_client(autocoder.mcp_url) as s:
        created = await call(s, "create_project", caller="scope-a", name="alpha", description="A's")
        assert created["project_id"].startswith("proj_") and len(created["project_id"]) == 15
        assert created["name"] == "alpha" and created["description"] == "A's" and created["created_at"]

        mine = (await call(s, "list_projects", caller="scope-a"))["projects"]
        assert [p["project_id"] for p in mine] == [created["project_id"]]
        assert mine[0]["status"] == "new" and mine[0]["sessions"] == []
        assert (await call(s, "list_projects", caller="scope-b"))["projects"] == []

        # B cannot run a task on A's project, and learns nothing about whether it exists.
        theirs = await call_error(
            s, "execute_coding_task", caller="scope-b", project_id=created["project_id"], task="build an API"
        )
        unknown = await call_error(
            s, "execute_coding_task", caller="scope-b", project_id="proj_0000000000", task="build an API"
        )
        assert "project not found" in theirs and theirs == unknown

        queued = await call(
            s,
            "execute_coding_task",
            caller="scope-a",
            project_id=created["project_id"],
            task="plan it",
            agents=["planner"],
        )
        for tool in ("get_session_details", "get_session_files"):
            theirs = await call_error(s, tool, caller="scope-b", session_id=queued["session_id"])
            unknown = await call_error(s, tool, caller="scope-b", session_id="sess_0000000000000000")
            assert "session not found" in theirs and theirs == unknown
        await wait_finished(s, queued["session_id"], caller="scope-a")
        listed = (await call(s, "list_projects", caller="scope-a"))["projects"][0]
        assert listed["sessions"] == [queued["session_id"]] and listed["status"] == "succeeded"


async def test_no_caller_means_anonymous(autocoder: AutoCoderServer) -> None:
    async with mcp_client(autocoder.mcp_url) as s:
        created = await call(s, "create_project", caller=None, name="anon")
        anon = (await call(s, "list_projects", caller=None))["projects"]
        assert created["project_id"] in [p["project_id"] for p in anon]
        named = (await call(s, "list_projects", caller="someone"))["projects"]
        assert created["project_id"] not in [p["project_id"] for p in named]


@pytest.mark.parametrize(
    ("task", "agents"),
    [
        ("build a REST API with user authentication", ["planner", "developer", "tester"]),
        ("write tests", ["planner", "tester"]),
        ("docker deploy", ["planner", "devops"]),
        ("design a schema", ["planner", "database"]),
        ("dashboard", ["planner", "uiux"]),
        (
            "build a todo API with a dashboard, a database schema and a Dockerfile",
            ["planner", "database", "developer", "uiux", "devops", "tester"],
        ),
    ],
)
async def test_default_agent_selection(autocoder: AutoCoderServer, task: str, agents: list[str]) -> None:
    async with mcp_client(autocoder.mcp_url) as s:
        project = await call(s, "create_project", name="selection")
        queued = await call(s, "execute_coding_task", project_id=project["project_id"], task=task)
        assert queued["status"] == "queued"
        assert queued["agents"] == agents
        details = await wait_finished(s, queued["session_id"])
    assert details["status"] == "succeeded", details
    assert details["agents"] == dict.fromkeys(agents, "done")


async def test_explicit_agents_run_only_those(autocoder: AutoCoderServer) -> None:
    async with mcp_client(autocoder.mcp_url) as s:
        project = await call(s, "create_project", name="ops only")
        queued = await call(
            s,
            "execute_coding_task",
            project_id=project["project_id"],
            task="build a REST API with user authentication",
            agents=["devops", "planner"],
        )
        assert queued["agents"] == ["planner", "devops"]  # pipeline order, not the caller's
        details = await wait_finished(s, queued["session_id"])
        files = await call(s, "get_session_files", session_id=queued["session_id"])
    assert details["status"] == "succeeded"
    assert details["agents"] == {"planner": "done", "devops": "done"}
    assert {e["agent"] for e in details["events"]} == {None, "planner", "devops"}
    assert details["test_results"] is None
    paths = {f["path"] for f in files["files"]}
    assert {"PLAN.md", "Dockerfile", "compose.yaml"} <= paths
    assert not any(p.startswith(("app/", "tests/")) for p in paths)


async def test_unknown_agent_is_an_error_naming_the_valid_ones(autocoder: AutoCoderServer) -> None:
    async with mcp_client(autocoder.mcp_url) as s:
        project = await call(s, "create_project", name="bad agents")
        error = await call_error(
            s, "execute_coding_task", project_id=project["project_id"], task="x", agents=["planner", "wizard"]
        )
        assert "wizard" in error
        for valid in ("planner", "database", "developer", "uiux", "devops", "tester"):
            assert valid in error
        assert (await call(s, "list_projects"))["projects"]  # nothing else broke
        listed = [
            p
            for p in (await call(s, "list_projects"))["projects"]
            if p["project_id"] == project["project_id"]
        ]
        assert listed[0]["sessions"] == []
