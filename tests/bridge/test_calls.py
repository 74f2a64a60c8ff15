"""The bridge against a live (fake) AutoCoder: tools, calls, ownership, caches, timeouts, watching."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import grpc
import pytest
import redis
from wacoder import keys
from wacoder.v1 import bridge_pb2

from tests.bridge.conftest import Bridge, FakeAutoCoder
from tests.harness import RedisServer


def new_caller() -> str:
    return uuid.uuid4().hex[:16]


def call(
    bridge: Bridge, tool: str, caller: str, /, timeout: float = 10, **arguments: Any
) -> bridge_pb2.CallToolResponse:
    return bridge.stub.CallTool(
        bridge_pb2.CallToolRequest(name=tool, arguments_json=json.dumps(arguments), caller=caller),
        timeout=timeout,
    )


def result(reply: bridge_pb2.CallToolResponse) -> Any:
    assert not reply.is_error, reply.error_message
    return json.loads(reply.result_json)


@pytest.fixture(scope="module")
def store(redis_server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(redis_server.url, decode_responses=True)


def test_list_tools_describes_the_server_tools(bridge: Bridge) -> None:
    tools = {t.name: t for t in bridge.stub.ListTools(bridge_pb2.ListToolsRequest(), timeout=10).tools}
    assert {
        "create_project",
        "list_projects",
        "execute_coding_task",
        "get_session_details",
        "get_session_files",
        "check_system_health",
    } <= set(tools)
    schema = json.loads(tools["create_project"].input_schema_json)
    assert "name" in schema["properties"] and schema["required"] == ["name"]
    assert tools["list_projects"].description


def test_call_returns_structured_result_and_caller_reaches_meta(bridge: Bridge, fake: FakeAutoCoder) -> None:
    alice, bob = new_caller(), new_caller()
    project = result(call(bridge, "create_project", alice, name="todo-api", description="a REST API"))
    assert project["name"] == "todo-api" and project["project_id"]
    stats = fake.stats()
    assert {"caller": alice} in [{k: v for k, v in m.items() if k == "caller"} for m in stats["metas"]]
    assert "Bearer test-key" in stats["auth"]
    # AutoCoder scopes by the caller the bridge passes: bob does not see alice's project.
    assert [p["project_id"] for p in result(call(bridge, "list_projects", alice))["projects"]] == [
        project["project_id"]
    ]
    assert result(call(bridge, "list_projects", bob))["projects"] == []


def test_tool_error_is_a_reply_not_a_grpc_error(bridge: Bridge) -> None:
    reply = call(bridge, "execute_coding_task", new_caller(), project_id="nope", task="x")
    assert reply.is_error and "not found" in reply.error_message
    assert not reply.cached


def test_invalid_requests(bridge: Bridge) -> None:
    caller = new_caller()
    for request in (
        bridge_pb2.CallToolRequest(name="list_projects", caller=""),
        bridge_pb2.CallToolRequest(name="", caller=caller),
        bridge_pb2.CallToolRequest(name="list_projects", caller=caller, arguments_json="[1]"),
        bridge_pb2.CallToolRequest(name="list_projects", caller=caller, arguments_json="{"),
    ):
        with pytest.raises(grpc.RpcError) as err:
            bridge.stub.CallTool(request, timeout=5)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        list(bridge.stub.WatchSession(bridge_pb2.WatchSessionRequest(session_id="s", caller=""), timeout=5))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_projects_cache_and_invalidation(bridge: Bridge, fake: FakeAutoCoder, store: redis.Redis) -> None:
    caller = new_caller()
    first = call(bridge, "list_projects", caller)
    before = fake.calls("list_projects")
    second = call(bridge, "list_projects", caller)
    assert not first.cached and second.cached
    assert result(second) == result(first)
    assert fake.calls("list_projects") == before  # served without asking AutoCoder
    assert 0 < store.ttl(keys.projects_cache(caller)) <= keys.PROJECTS_TTL_S

    created = result(call(bridge, "create_project", caller, name="p1"))
    assert not store.exists(keys.projects_cache(caller))
    third = call(bridge, "list_projects", caller)
    assert not third.cached
    assert [p["project_id"] for p in result(third)["projects"]] == [created["project_id"]]


def test_health_cached_for_a_minute(bridge: Bridge, store: redis.Redis) -> None:
    store.delete(keys.health_cache())
    first = call(bridge, "check_system_health", new_caller())
    second = call(bridge, "check_system_health", new_caller())  # global: any caller hits it
    assert not first.cached and second.cached
    assert result(first)["status"] == "healthy"
    assert 50 < store.ttl(keys.health_cache()) <= keys.HEALTH_TTL_S


def test_slow_tool_is_deadline_exceeded(bridge: Bridge) -> None:
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        call(bridge, "slow_tool", new_caller(), seconds=5)  # MCP_CALL_TIMEOUT_S=2
    assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert "within 2 s" in (err.value.details() or "")
    assert time.monotonic() - started < 4.5
    # The session is still good afterwards.
    assert not call(bridge, "list_projects", new_caller()).is_error


def start_session(bridge: Bridge, caller: str) -> str:
    project = result(call(bridge, "create_project", caller, name="watched"))
    return str(
        result(
            call(bridge, "execute_coding_task", caller, project_id=project["project_id"], task="build it")
        )["session_id"]
    )


def watch(
    bridge: Bridge, session_id: str, caller: str, after_event: int = 0
) -> list[bridge_pb2.SessionEvent]:
    request = bridge_pb2.WatchSessionRequest(session_id=session_id, caller=caller, after_event=after_event)
    return list(bridge.stub.WatchSession(request, timeout=20))


def test_watch_streams_events_until_final(bridge: Bridge, store: redis.Redis) -> None:
    caller = new_caller()
    session_id = start_session(bridge, caller)
    events = watch(bridge, session_id, caller)
    regular, final = events[:-1], events[-1]
    assert [e.seq for e in regular] == [1, 2, 3, 4, 5, 6]
    assert [e.progress for e in regular] == sorted(e.progress for e in regular)
    assert regular[0].agent == "planner" and regular[0].agent_status == "running" and regular[0].message
    assert not any(e.final for e in regular)
    assert final.final and final.status == "succeeded" and final.seq == 6
    details = json.loads(final.detail_json)
    assert details["test_results"]["passed"] == 3 and details["summary"] and details["agents"]

    # Resuming after event 3 yields 4..6 and the end, no repeats.
    resumed = watch(bridge, session_id, caller, after_event=3)
    assert [e.seq for e in resumed if not e.final] == [4, 5, 6] and resumed[-1].final

    # The session has ended (the watch saw it), so its files are cached from now on.
    assert store.exists(keys.session_ended(caller, session_id))
    files = call(bridge, "get_session_files", caller, session_id=session_id)
    assert not files.cached and result(files)["files"][0]["name"] == "app.py"
    assert call(bridge, "get_session_files", caller, session_id=session_id).cached
    assert 0 < store.ttl(keys.files_cache(caller, session_id)) <= keys.FILES_TTL_S


def test_files_of_a_running_session_are_not_cached(bridge: Bridge) -> None:
    caller = new_caller()
    session_id = start_session(bridge, caller)
    assert not call(bridge, "get_session_files", caller, session_id=session_id).cached
    assert not call(bridge, "get_session_files", caller, session_id=session_id).cached


def test_watch_of_someone_elses_session_is_not_found(bridge: Bridge) -> None:
    session_id = start_session(bridge, new_caller())
    for sid in (session_id, "no-such-session"):
        with pytest.raises(grpc.RpcError) as err:
            watch(bridge, sid, new_caller())
        assert err.value.code() is grpc.StatusCode.NOT_FOUND
