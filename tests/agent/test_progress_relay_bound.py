"""The agent's progress relay keeps only the relays that still run: once a session has ended
and its summary is sent, its relay is forgotten (ProgressRelay.running drops back), so a
long-lived agent does not hold a task per session it ever relayed.

The relay runs in this process (to read `running`), against real processes: AutoCoder, the
mcp-bridge and the notifier, real Redis, and the local Twilio Messages API."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator

import pytest
from agent.autocoder import AutoCoder
from agent.outbound import Outbound
from agent.progress import ProgressRelay
from agent.state import Project
from devtools.stack import Stack, settings_for
from wacoder import grpc as wgrpc
from wacoder import keys
from wacoder.crypto import StateCipher
from wacoder.redis import Store, open_redis
from wacoder.v1 import bridge_pb2_grpc, notifier_pb2_grpc

from tests.harness import TwilioSim, start_stack, user_of

PHONE = "+15557730001"
SESSIONS = 3


@pytest.fixture(scope="module")
def stack(env: dict[str, str]) -> Iterator[Stack]:
    # No agent process: the relay under test is this process's own.
    stack = start_stack(env, ["autocoder", "mcp-bridge", "notifier"])
    yield stack
    stack.stop()


@pytest.fixture
async def redis(stack: Stack, env: dict[str, str]) -> AsyncIterator[Store]:
    client = await open_redis(settings_for(env))
    yield client
    await client.aclose()


async def test_a_relay_is_forgotten_once_its_session_ended(
    stack: Stack, env: dict[str, str], twilio_sim: TwilioSim, redis: Store
) -> None:
    settings = settings_for(env)
    autocoder = AutoCoder(
        bridge_pb2_grpc.McpBridgeServiceStub(wgrpc.channel(settings.mcp_bridge_addr, settings)), 40
    )
    outbound = Outbound(
        notifier_pb2_grpc.NotifierServiceStub(wgrpc.channel(settings.notifier_addr, settings)), 5
    )
    relay = ProgressRelay(
        redis,
        StateCipher.from_settings(settings),
        autocoder,
        outbound,
        give_up_after_s=60,
        batch_interval_s=0.2,
    )
    caller = user_of(env, PHONE)
    shard = keys.shard_of(caller)
    created = await autocoder.call(caller, "create_project", name="relay-bound", idempotency_key="bound:p")
    project = Project(created["project_id"], created["name"])
    sessions = []
    for n in range(SESSIONS):
        started = await autocoder.call(
            caller,
            "execute_coding_task",
            project_id=project.project_id,
            task=f"build a small greeting API number {n}",
            idempotency_key=f"bound:s{n}",
        )
        sessions.append(started["session_id"])
    # As a turn does: the watches committed, then the relays started.
    async with redis.pipeline(transaction=True) as pipe:
        for session_id in sessions:
            relay.register(pipe, session_id, f"whatsapp:{PHONE}", caller, project)
        await pipe.execute()
    for session_id in sessions:
        relay.start(shard, session_id)
        relay.start(shard, session_id)  # a redo's start: still one relay per session
    assert relay.running == SESSIONS

    for _ in range(600):  # up to a minute: the sessions run their generated tests
        if not relay.running:
            break
        await asyncio.sleep(0.1)
    assert relay.running == 0

    # They ended as relays should: each session's summary sent, its watch gone.
    bodies = [m["body"] for m in twilio_sim.messages(f"whatsapp:{PHONE}")]
    for session_id in sessions:
        assert any(re.search(rf"Session `{session_id}` in \*relay-bound\*: \*\w+\*", b) for b in bodies), (
            bodies
        )
    assert not set(sessions) & await redis.smembers(keys.active_watches(shard))
    await relay.stop()
