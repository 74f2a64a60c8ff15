"""The bridge when AutoCoder is down, restarts, crashes mid-call or blips during a watch."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from wacoder.v1 import bridge_pb2

from tests.bridge.conftest import Bridge, BridgeFactory, FakeAutoCoder
from tests.bridge.test_calls import call, new_caller, result, start_session, watch


def unavailable(bridge: Bridge, tool: str = "list_projects", **arguments: Any) -> tuple[str, float]:
    """Calls a tool that must fail with UNAVAILABLE; returns the message and how long it took."""
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        call(bridge, tool, new_caller(), **arguments)
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE, err.value.details()
    return err.value.details() or "", time.monotonic() - started


def log_lines(bridge: Bridge) -> list[dict[str, Any]]:
    path: Path | None = bridge.stack["mcp-bridge"].log_path
    assert path is not None
    lines = []
    for line in path.read_text().splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue
    return lines


def test_serves_while_autocoder_is_down_and_fails_fast(bridge_factory: BridgeFactory) -> None:
    down = FakeAutoCoder()  # never started: its port refuses connections
    bridge = bridge_factory(down.url, BREAKER_FAILURE_THRESHOLD="100")
    health = health_pb2_grpc.HealthStub(bridge.channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    for _ in range(3):
        message, elapsed = unavailable(bridge)
        assert elapsed < 5 and "unreachable" in message
    with pytest.raises(grpc.RpcError) as err:
        bridge.stub.ListTools(bridge_pb2.ListToolsRequest(), timeout=10)
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE


def test_breaker_opens_fails_fast_half_opens_and_closes(
    bridge_factory: BridgeFactory, fake_factory: Any
) -> None:
    fake: FakeAutoCoder = fake_factory()
    # The reset timeout leaves room for restarting AutoCoder on a busy machine (a few seconds).
    bridge = bridge_factory(fake.url, BREAKER_FAILURE_THRESHOLD="3", BREAKER_RESET_TIMEOUT_S="8")
    assert not call(bridge, "list_projects", new_caller()).is_error
    fake.stop()
    for _ in range(3):
        message, elapsed = unavailable(bridge)
        assert "circuit open" not in message and elapsed < 5
    opened = time.monotonic()
    message, elapsed = unavailable(bridge)
    assert "AutoCoder is unavailable (circuit open), retry in" in message and elapsed < 0.5

    # AutoCoder is back, but the breaker has not let anything through yet.
    fake.start()
    assert time.monotonic() - opened < 8, "AutoCoder took longer to restart than the test allows"
    assert "circuit open" in unavailable(bridge)[0]
    assert fake.calls() == 0
    # After the reset timeout, one probe goes through, succeeds and closes the breaker.
    time.sleep(max(0.0, 8.2 - (time.monotonic() - opened)))
    assert not call(bridge, "list_projects", new_caller()).is_error
    assert fake.calls("list_projects") == 1
    for _ in range(3):
        assert not call(bridge, "list_projects", new_caller()).is_error
    transitions = [(e["from_state"], e["to_state"]) for e in log_lines(bridge) if "to_state" in e]
    assert transitions == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


def test_failed_probe_reopens(bridge_factory: BridgeFactory) -> None:
    down = FakeAutoCoder()
    bridge = bridge_factory(down.url, BREAKER_FAILURE_THRESHOLD="1", BREAKER_RESET_TIMEOUT_S="1")
    unavailable(bridge)
    assert "circuit open" in unavailable(bridge)[0]
    time.sleep(1.1)
    assert "circuit open" not in unavailable(bridge)[0]  # the probe, refused by AutoCoder
    assert "circuit open" in unavailable(bridge)[0]  # open again
    transitions = [(e["from_state"], e["to_state"]) for e in log_lines(bridge) if "to_state" in e]
    assert transitions == [("closed", "open"), ("open", "half_open"), ("half_open", "open")]


def test_reconnects_after_autocoder_restarts(bridge_factory: BridgeFactory, fake_factory: Any) -> None:
    fake: FakeAutoCoder = fake_factory()
    bridge = bridge_factory(fake.url)
    caller = new_caller()
    result(call(bridge, "create_project", caller, name="before"))
    fake.stop()
    fake.start()  # same port, a new process: the bridge's MCP session id means nothing to it
    # Not even a write fails: AutoCoder rejected the stale session before running anything,
    # so the bridge reconnects and sends it again, once.
    result(call(bridge, "create_project", caller, name="after"))
    assert fake.call_log().count("create_project") == 2
    names = sorted(p["name"] for p in result(call(bridge, "list_projects", caller))["projects"])
    assert names == ["after", "before"]


def test_write_lost_in_flight_is_not_retried(bridge_factory: BridgeFactory, fake_factory: Any) -> None:
    fake: FakeAutoCoder = fake_factory()
    bridge = bridge_factory(fake.url)
    caller = new_caller()
    assert not call(bridge, "list_projects", caller).is_error
    fake.crash_on("create_project")  # AutoCoder dies after receiving the request
    with pytest.raises(grpc.RpcError) as err:
        call(bridge, "create_project", caller, name="maybe")
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "may or may not have run" in (err.value.details() or "")
    fake.proc.wait(5)  # type: ignore[union-attr]
    fake.start()
    time.sleep(0.5)
    assert fake.call_log().count("create_project") == 1
    # An idempotent read is retried through a reconnect instead.
    assert not call(bridge, "list_projects", caller).is_error


def restart_when_it_dies(fake: FakeAutoCoder) -> threading.Thread:
    """Brings the fake back on its port once its process has exited (in the background)."""

    def run() -> None:
        assert fake.proc is not None
        fake.proc.wait(20)
        fake.start()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("tool", ["create_project", "execute_coding_task"])
def test_write_with_an_idempotency_key_is_retried_after_a_lost_answer(
    bridge_factory: BridgeFactory, fake_factory: Any, tool: str
) -> None:
    fake: FakeAutoCoder = fake_factory()
    # Room for the fake to come back (a second or two) within one call's retries.
    bridge = bridge_factory(fake.url, MCP_RETRIES="8", MCP_RETRY_BUDGET_S="20", MCP_CALL_TIMEOUT_S="5")
    caller = new_caller()
    project = result(call(bridge, "create_project", caller, name="base"))
    arguments: dict[str, Any] = {"name": "keyed"}
    if tool == "execute_coding_task":
        arguments = {"project_id": project["project_id"], "task": "build it"}
    arguments["idempotency_key"] = "SM0123456789abcdef0123456789abcdef:" + tool + ":0"
    sent_before = fake.call_log().count(tool)
    # AutoCoder does the work, then dies before answering: the bridge cannot know it ran.
    fake.crash_on(tool, when="after")
    restarter = restart_when_it_dies(fake)
    first = result(call(bridge, tool, caller, timeout=30, **arguments))
    restarter.join(20)
    # Sent again (the key makes that safe); AutoCoder answered with what it did the first time.
    assert fake.call_log().count(tool) - sent_before == 2
    assert result(call(bridge, tool, caller, **arguments)) == first
    if tool == "create_project":
        names = sorted(p["name"] for p in result(call(bridge, "list_projects", caller))["projects"])
        assert names == ["base", "keyed"]
    else:
        assert first["project_id"] == project["project_id"] and first["session_id"]


def test_same_key_without_schema_support_is_not_retried(
    bridge_factory: BridgeFactory, fake_factory: Any
) -> None:
    """A key on a tool whose schema does not declare it proves nothing: not retried."""
    fake: FakeAutoCoder = fake_factory()
    bridge = bridge_factory(fake.url, MCP_RETRIES="8", MCP_RETRY_BUDGET_S="20")
    caller = new_caller()
    assert not call(bridge, "list_projects", caller).is_error
    fake.crash_on("append_note", when="after")
    with pytest.raises(grpc.RpcError) as err:
        call(bridge, "append_note", caller, text="hello", idempotency_key="k-1")
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "may or may not have run" in (err.value.details() or "")
    assert fake.call_log().count("append_note") == 1


def test_watch_survives_a_blip(bridge_factory: BridgeFactory, fake_factory: Any) -> None:
    fake: FakeAutoCoder = fake_factory()
    bridge = bridge_factory(fake.url)
    caller = new_caller()
    session_id = start_session(bridge, caller)
    events: list[bridge_pb2.SessionEvent] = []
    failure: list[BaseException] = []

    def follow() -> None:
        try:
            events.extend(watch(bridge, session_id, caller))
        except BaseException as exc:
            failure.append(exc)

    watcher = threading.Thread(target=follow)
    watcher.start()
    time.sleep(0.5)
    fake.stop()
    time.sleep(1.5)
    fake.start()
    watcher.join(20)
    assert not failure, failure
    assert [e.seq for e in events if not e.final] == [1, 2, 3, 4, 5, 6]
    assert events[-1].final and events[-1].status == "succeeded"


def test_watch_gives_up_after_a_long_outage(bridge_factory: BridgeFactory, fake_factory: Any) -> None:
    fake: FakeAutoCoder = fake_factory()
    bridge = bridge_factory(fake.url, WATCH_MAX_OUTAGE_S="2")
    caller = new_caller()
    session_id = start_session(bridge, caller)
    fake.stop()
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        watch(bridge, session_id, caller)
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "resume with after_event=" in (err.value.details() or "")
    assert time.monotonic() - started < 10


def test_sigterm_ends_watches_and_exits_cleanly(bridge_factory: BridgeFactory, fake_factory: Any) -> None:
    fake: FakeAutoCoder = fake_factory()
    bridge = bridge_factory(fake.url)
    caller = new_caller()
    session_id = start_session(bridge, caller)
    stream = bridge.stub.WatchSession(
        bridge_pb2.WatchSessionRequest(session_id=session_id, caller=caller), timeout=20
    )
    first = next(stream)
    assert first.seq >= 1
    process = bridge.stack["mcp-bridge"]
    started = time.monotonic()
    process.stop()
    assert process.proc is not None and process.proc.returncode == 0
    assert time.monotonic() - started < 5
    with pytest.raises(grpc.RpcError):
        list(stream)
