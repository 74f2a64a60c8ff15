"""Idempotency keys on create_project and execute_coding_task, over real MCP (ADR 0002)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from tests.autocoder.conftest import AutoCoderServer, call, call_error, mcp_client, wait_finished

# What the agent sends: derived from Twilio's MessageSid, so a replayed message repeats it.
KEY = "SM0123456789abcdef0123456789abcdef:create_project:0"


async def test_a_repeated_create_project_returns_the_first_project(autocoder: AutoCoderServer) -> None:
    async with mcp_client(autocoder.mcp_url) as s:
        first = await call(s, "create_project", caller="idem-a", name="shop", idempotency_key=KEY)
        # Arguments of a repeat are not compared: a replayed message may be worded differently.
        again = await call(s, "create_project", caller="idem-a", name="shop 2", idempotency_key=KEY)
        assert again == first
        assert [p["project_id"] for p in (await call(s, "list_projects", caller="idem-a"))["projects"]] == [
            first["project_id"]
        ]
        # The same key from someone else is theirs alone; no key means no memory.
        other = await call(s, "create_project", caller="idem-b", name="shop", idempotency_key=KEY)
        assert other["project_id"] != first["project_id"]
        plain = [await call(s, "create_project", caller="idem-c", name="plain") for _ in range(2)]
        assert plain[0]["project_id"] != plain[1]["project_id"]
        # A key names what it created per tool: the same string on execute_coding_task is new there.
        queued = await call(
            s,
            "execute_coding_task",
            caller="idem-a",
            project_id=first["project_id"],
            task="plan it",
            agents=["planner"],
            idempotency_key=KEY,
        )
        assert queued["project_id"] == first["project_id"]
        await wait_finished(s, queued["session_id"], caller="idem-a")


async def test_a_repeated_execute_coding_task_starts_nothing(autocoder: AutoCoderServer) -> None:
    async with mcp_client(autocoder.mcp_url) as s:
        project = await call(s, "create_project", caller="idem-run", name="api")
        args = {"project_id": project["project_id"], "task": "plan it", "agents": ["planner"]}
        key = "SMfeedface:execute_coding_task:0"
        first = await call(s, "execute_coding_task", caller="idem-run", idempotency_key=key, **args)
        assert first["status"] == "queued"
        while_running = await call(s, "execute_coding_task", caller="idem-run", idempotency_key=key, **args)
        details = await wait_finished(s, first["session_id"], caller="idem-run")
        after_it_ended = await call(
            s, "execute_coding_task", caller="idem-run", idempotency_key=key, **{**args, "task": "other"}
        )
        assert while_running == first and after_it_ended == first
        listed = (await call(s, "list_projects", caller="idem-run"))["projects"]
        assert listed[0]["sessions"] == [first["session_id"]]
        # One pipeline run: its events once each, and nothing happened after it ended.
        await asyncio.sleep(0.3)
        final = await call(s, "get_session_details", caller="idem-run", session_id=first["session_id"])
        assert final["events"] == details["events"]
        messages = [e["message"] for e in final["events"]]
        assert sum(m.startswith("session started") for m in messages) == 1
        assert sum(m.startswith("planner started") for m in messages) == 1


async def test_a_refused_call_does_not_use_up_its_key(autocoder: AutoCoderServer) -> None:
    async with mcp_client(autocoder.mcp_url) as s:
        project = await call(s, "create_project", caller="idem-err", name="api")
        key = "SMrefused:execute_coding_task:0"
        error = await call_error(
            s,
            "execute_coding_task",
            caller="idem-err",
            project_id=project["project_id"],
            task="x",
            agents=["wizard"],
            idempotency_key=key,
        )
        assert "wizard" in error
        queued = await call(
            s,
            "execute_coding_task",
            caller="idem-err",
            project_id=project["project_id"],
            task="plan it",
            agents=["planner"],
            idempotency_key=key,
        )
        await wait_finished(s, queued["session_id"], caller="idem-err")


async def test_concurrent_repeats_create_one_project(autocoder: AutoCoderServer) -> None:
    # Two connections, as two bridge replicas (or a retry racing the original) would send them.
    async with mcp_client(autocoder.mcp_url) as s1, mcp_client(autocoder.mcp_url) as s2:
        results = await asyncio.gather(
            *(
                call(s, "create_project", caller="idem-race", name="race", idempotency_key="SMrace:0")
                for s in (s1, s2, s1, s2)
            )
        )
        assert len({r["project_id"] for r in results}) == 1
        assert len((await call(s1, "list_projects", caller="idem-race"))["projects"]) == 1


async def test_the_key_is_validated(autocoder: AutoCoderServer) -> None:
    async with mcp_client(autocoder.mcp_url) as s:
        for bad in ("", "k" * 201):
            await call_error(s, "create_project", caller="idem-bad", name="x", idempotency_key=bad)
        assert (await call(s, "list_projects", caller="idem-bad"))["projects"] == []
        await call(s, "create_project", caller="idem-bad", name="x", idempotency_key="k" * 200)


@pytest.fixture(scope="module")
def forgetful() -> Iterator[AutoCoderServer]:
    server = AutoCoderServer(AUTOCODER_IDEMPOTENCY_MAX_KEYS="3", AUTOCODER_IDEMPOTENCY_TTL_S="2").start()
    yield server
    assert server.stop() == 0
    server.cleanup()


async def test_keys_are_bounded_in_number_and_time(forgetful: AutoCoderServer) -> None:
    async with mcp_client(forgetful.mcp_url) as s:

        async def create(key: str) -> str:
            return str((await call(s, "create_project", name=key, idempotency_key=key))["project_id"])

        started = time.monotonic()
        ids = {key: await create(key) for key in ("k1", "k2", "k3", "k4")}
        assert await create("k4") == ids["k4"]  # remembered
        assert await create("k1") != ids["k1"]  # the oldest went when the fourth came
        await asyncio.sleep(max(0.0, started + 2.5 - time.monotonic()))
        assert await create("k4") != ids["k4"]  # and every key goes after its time
