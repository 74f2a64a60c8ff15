"""Honest health: `/livez` and `/readyz` on every service of a running stack; the webhook stays
ready while the agent is down (it stores messages itself) and is not ready while Redis is down;
the bridge is not ready while AutoCoder is unreachable. And the small ops server on its own."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
import pytest
from agent.catalog import HELP
from devtools.stack import Stack, free_port
from wacoder.ops_http import OpsServer, Reply

from tests.harness import Conversation, RedisServer, TwilioSim

# The health port of each service in the environment stack_env makes.
PORT_VARIABLE = {
    "agent": "AGENT_METRICS_PORT",
    "mcp-bridge": "MCP_BRIDGE_METRICS_PORT",
    "notifier": "NOTIFIER_METRICS_PORT",
    "autocoder": "AUTOCODER_METRICS_PORT",
}


@pytest.fixture(scope="module")
def module_redis(own_redis: RedisServer) -> RedisServer:
    return own_redis  # this module stops and restarts Redis


def url(env: dict[str, str], service: str, path: str) -> str:
    if service == "webhook":
        return env["PUBLIC_BASE_URL"] + path
    return f"http://127.0.0.1:{env[PORT_VARIABLE[service]]}{path}"


def status(env: dict[str, str], service: str, path: str) -> int | None:
    try:
        return httpx.get(url(env, service, path), timeout=5).status_code
    except httpx.HTTPError:
        return None


def wait_status(env: dict[str, str], service: str, path: str, expected: int, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (got := status(env, service, path)) != expected:
        assert time.monotonic() < deadline, f"{service}{path}: {got}, expected {expected}"
        time.sleep(0.1)


@pytest.mark.parametrize("service", ["webhook", "agent", "mcp-bridge", "notifier", "autocoder"])
def test_every_service_serves_livez_and_readyz(stack: Stack, env: dict[str, str], service: str) -> None:
    for path in ("/livez", "/readyz"):
        answer = httpx.get(url(env, service, path), timeout=5)
        assert answer.status_code == 200, (service, path, answer.text)
        assert answer.text.strip() == "ok"
    assert status(env, service, "/nothing-here") == 404


def test_the_webhook_stays_ready_while_the_agent_is_down(
    stack: Stack, env: dict[str, str], twilio_sim: TwilioSim, new_user: Callable[[], Conversation]
) -> None:
    user = new_user()
    stack["agent"].stop()
    try:
        assert status(env, "agent", "/livez") is None
        for _ in range(3):
            assert status(env, "webhook", "/readyz") == 200
            assert status(env, "webhook", "/livez") == 200
            time.sleep(0.2)
        user.send("/help")  # asserts the 200: the webhook stored it in the agent's inbox itself
        # /health stays the detailed view: it names what is down.
        health = httpx.get(url(env, "webhook", "/health"), timeout=5)
        assert health.status_code == 503
        assert health.json()["checks"]["agent"] == "unavailable"
    finally:
        stack["agent"].start()
        stack["agent"].wait_ready()
    assert user.next(1) == [HELP]
    time.sleep(1.0)
    assert len(twilio_sim.messages(f"whatsapp:{user.phone}")) == 1


def test_the_bridge_is_not_ready_while_autocoder_is_down(stack: Stack, env: dict[str, str]) -> None:
    stack["autocoder"].stop()
    try:
        wait_status(env, "mcp-bridge", "/readyz", 503)
        assert status(env, "mcp-bridge", "/livez") == 200
        assert status(env, "webhook", "/readyz") == 200
    finally:
        stack["autocoder"].start()
        stack["autocoder"].wait_ready()
    # Back without anybody's call: the probe itself makes the session again.
    wait_status(env, "mcp-bridge", "/readyz", 200)


def test_readiness_follows_redis(stack: Stack, env: dict[str, str], module_redis: RedisServer) -> None:
    module_redis.stop()
    try:
        for service in ("webhook", "agent", "notifier"):
            wait_status(env, service, "/readyz", 503)
            assert status(env, service, "/livez") == 200
        # The webhook's 503 says why, in plain text.
        assert "redis" in httpx.get(url(env, "webhook", "/readyz"), timeout=5).text
    finally:
        module_redis.start()
    for service in ("webhook", "agent", "notifier", "mcp-bridge", "autocoder"):
        wait_status(env, service, "/readyz", 200)


# ---- the ops server on its own ---------------------------------------------------------------


async def _get(port: int, path: str, method: str = "GET") -> httpx.Response:
    async with httpx.AsyncClient(trust_env=False) as client:
        return await client.request(method, f"http://127.0.0.1:{port}{path}", timeout=5)


async def _raw(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return answer


async def test_ops_server_readiness_is_the_check_bounded_in_time() -> None:
    state = {"mode": "ready"}

    async def check() -> bool:
        if state["mode"] == "hang":
            await asyncio.sleep(60)
        if state["mode"] == "raise":
            raise RuntimeError("boom")
        return state["mode"] == "ready"

    server = await OpsServer("127.0.0.1", free_port(), check, check_timeout_s=0.2).start()
    try:
        assert (await _get(server.port, "/readyz")).status_code == 200
        for mode in ("not ready", "raise", "hang"):
            state["mode"] = mode
            began = time.monotonic()
            answer = await _get(server.port, "/readyz")
            assert answer.status_code == 503 and answer.text == "not ready\n"
            assert time.monotonic() - began < 2
            assert (await _get(server.port, "/livez")).status_code == 200
    finally:
        await server.stop()


async def test_ops_server_answers_anything_without_falling_over() -> None:
    async def ready() -> bool:
        return True

    server = OpsServer("127.0.0.1", free_port(), ready)

    async def metrics() -> Reply:
        return Reply(200, b"# metrics\n", "text/plain; version=0.0.4")

    server.routes["/metrics"] = metrics  # how the observability work adds its route
    await server.start()
    try:
        assert (await _get(server.port, "/metrics")).text == "# metrics\n"
        assert (await _get(server.port, "/readyz?verbose=1")).status_code == 200
        assert (await _get(server.port, "/elsewhere")).status_code == 404
        assert (await _get(server.port, "/livez", "POST")).status_code == 405
        head = await _get(server.port, "/livez", "HEAD")
        assert head.status_code == 200 and head.content == b""
        assert (await _raw(server.port, b"garbage\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
        assert await _raw(server.port, b"GET /livez HTTP/1.1\r\nX: " + b"a" * 20_000) == b""
        assert (await _get(server.port, "/livez")).status_code == 200
    finally:
        await server.stop()


async def test_ops_server_on_a_busy_port_leaves_the_service_running() -> None:
    async def ready() -> bool:
        return True

    first = await OpsServer("127.0.0.1", free_port(), ready).start()
    try:
        second = await OpsServer("127.0.0.1", first.port, ready).start()  # logs, does not raise
        await second.stop()
        assert (await _get(first.port, "/livez")).status_code == 200
    finally:
        await first.stop()
