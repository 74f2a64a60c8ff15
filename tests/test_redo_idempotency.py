"""A redo creates nothing twice: the agent killed (SIGKILL) after AutoCoder created a project
or started a session, but before the agent committed its reply.

A forwarding proxy between mcp-bridge and AutoCoder (AUTOCODER_MCP_URL points at it) lets the
creating tools/call through and holds back AutoCoder's answer until the test has killed the
agent, so the crash lands in that window every time, not when random kills happen to. The
restarted agent redoes the turn with the same idempotency keys (derived from the MessageSid,
agent.turn), and AutoCoder answers with what it created the first time: one reply per
message, in order, and one project and one session at AutoCoder, as AutoCoder itself says.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from devtools.stack import Stack, free_port
from prometheus_client.parser import text_string_to_metric_families

from tests.autocoder.conftest import mcp_client
from tests.harness import Conversation, TwilioSim, start_stack, user_of


class HoldingProxy:
    """Forwards TCP connections to AutoCoder. Armed with a tool's name, it holds back what
    AutoCoder sends on the connection that carried that tool's tools/call, until `release()`:
    the tool has run at AutoCoder, and its caller has not heard of it."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.held = threading.Event()  # AutoCoder's whole answer to the armed call is held
        self._armed: bytes | None = None
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._release = asyncio.Event()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def start(self) -> None:
        self._thread.start()
        assert self._started.wait(10), "the proxy did not start"

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def hold(self, tool: str) -> None:
        """The next tools/call of `tool` (one only) has its answer held."""
        self.held.clear()
        self._loop.call_soon_threadsafe(self._release.clear)
        with self._lock:
            self._armed = f'"{tool}"'.encode()

    def release(self) -> None:
        self._loop.call_soon_threadsafe(self._release.set)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._connection, "127.0.0.1", self.port))
        self._started.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()

    def _take_armed(self, request: bytes) -> bool:
        """Whether `request` (what the connection sent since its last answer) is the armed call."""
        with self._lock:
            if self._armed is not None and b"tools/call" in request and self._armed in request:
                self._armed = None
                return True
        return False

    async def _connection(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            upstream_r, upstream_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_w.close()
            return
        holding = asyncio.Event()
        request = bytearray()

        async def requests() -> None:
            while data := await client_r.read(65536):
                request.extend(data)
                # Decided before the request goes on, so its answer cannot slip past.
                if self._take_armed(bytes(request)):
                    holding.set()
                    request.clear()
                upstream_w.write(data)
                await upstream_w.drain()
            upstream_w.close()

        async def answers() -> None:
            held = bytearray()
            while data := await upstream_r.read(65536):
                request.clear()  # an answer began: the next request starts afresh
                if not holding.is_set():
                    client_w.write(data)
                    await client_w.drain()
                    continue
                held.extend(data)
                # The JSON-RPC response itself (not just headers, perhaps of an event stream).
                if b'"result"' in held or b'"error"' in held:
                    self.held.set()
                    await self._release.wait()
                    holding.clear()
                    client_w.write(bytes(held))
                    held.clear()
                    await client_w.drain()
            client_w.close()

        pumps = [asyncio.ensure_future(requests()), asyncio.ensure_future(answers())]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            for writer in (client_w, upstream_w):
                writer.close()


@pytest.fixture(scope="module")
def autocoder_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def proxy(autocoder_port: int) -> Iterator[HoldingProxy]:
    proxy = HoldingProxy(autocoder_port)
    proxy.start()
    yield proxy
    proxy.release()
    proxy.stop()


@pytest.fixture(scope="module")
def stack_overrides(autocoder_port: int, proxy: HoldingProxy) -> dict[str, str]:
    # AutoCoder listens where the proxy forwards; the bridge dials the proxy.
    return {"AUTOCODER_PORT": str(autocoder_port), "AUTOCODER_MCP_URL": proxy.url}


@pytest.fixture(scope="module")
def stack(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = start_stack(env, log_dir=tmp_path_factory.mktemp("logs"))
    yield stack
    stack.stop()


def calls_cancelled_at_the_bridge(env: dict[str, str]) -> float:
    """CallTools whose caller went away before the bridge answered (the bridge's own count)."""
    exposition = httpx.get(f"http://127.0.0.1:{env['MCP_BRIDGE_METRICS_PORT']}/metrics", timeout=5).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == "wacoder_grpc_server_handled_total"
        and sample.labels == {"method": "/wacoder.v1.McpBridgeService/CallTool", "code": "CANCELLED"}
    )


def crash_after(
    stack: Stack, env: dict[str, str], proxy: HoldingProxy, tool: str, send: Callable[[], object]
) -> None:
    """Sends a message whose turn calls `tool`, and kills the agent once AutoCoder has done it
    and before the agent hears of it; then restarts the agent, which redoes the turn."""
    cancelled = calls_cancelled_at_the_bridge(env)
    proxy.hold(tool)
    send()
    assert proxy.held.wait(30), f"AutoCoder never answered {tool}"
    stack["agent"].kill()
    # AutoCoder's answer comes once the bridge has given up on the dead caller: one landing in
    # the very moment of that cancellation can leave the bridge's MCP session closed for good
    # (a bridge issue of its own, not this test's subject).
    deadline = time.monotonic() + 20
    while calls_cancelled_at_the_bridge(env) == cancelled:
        assert time.monotonic() < deadline, "the bridge never noticed its caller died"
        time.sleep(0.05)
    proxy.release()
    stack["agent"].start()
    stack["agent"].wait_ready()


def at_autocoder(env: dict[str, str], phone: str) -> list[dict[str, object]]:
    """The user's projects as AutoCoder itself lists them (directly, not through the proxy)."""

    async def ask() -> list[dict[str, object]]:
        bearer = {"Authorization": f"Bearer {env['AUTOCODER_API_KEY']}"}
        async with mcp_client(f"http://127.0.0.1:{env['AUTOCODER_PORT']}/mcp", bearer) as session:
            result = await session.call_tool("list_projects", {}, meta={"caller": user_of(env, phone)})
            assert not result.isError, result.content
            return list((result.structuredContent or {})["projects"])

    return asyncio.run(ask())


def test_new_and_run_redone_after_a_crash_create_one_project_and_one_session(
    stack: Stack, env: dict[str, str], twilio_sim: TwilioSim, proxy: HoldingProxy
) -> None:
    alice = Conversation(env, twilio_sim, "+15557710001")
    crash_after(stack, env, proxy, "create_project", lambda: alice.send("/new redo-notes"))
    crash_after(
        stack, env, proxy, "execute_coding_task", lambda: alice.send("/run build a REST API for notes")
    )
    alice.send("/list")
    alice.send("/agents")  # last: once its reply is here, any duplicate before it would be too

    created, started, listed, agents = alice.next(4, timeout_s=40)
    assert "Created project *redo-notes*" in created
    assert "Started session" in started and "Task: build a REST API for notes" in started
    assert listed.count("redo-notes") == 1
    assert "AutoCoder agents" in agents

    [project] = at_autocoder(env, alice.phone)
    assert project["name"] == "redo-notes"
    session_id = re.search(r"`(sess_[0-9a-f]+)`", started)
    assert session_id is not None
    assert project["sessions"] == [session_id.group(1)]


def test_a_build_request_redone_after_a_crash_creates_one_project_and_one_session(
    stack: Stack, env: dict[str, str], twilio_sim: TwilioSim, proxy: HoldingProxy
) -> None:
    """Free text with no project: the turn creates a project, then starts a session in it; the
    agent dies after both, so the redo repeats both calls."""
    bob = Conversation(env, twilio_sim, "+15557710002")
    crash_after(
        stack, env, proxy, "execute_coding_task", lambda: bob.send("build me a todo app with a database")
    )
    bob.send("/agents")

    started, agents = bob.next(2, timeout_s=40)
    assert "Created project *todo-app*" in started and "Started session" in started
    # The redo's list held the project its first attempt made: Bob has no other one to be told of.
    assert "other projects" not in started
    assert "AutoCoder agents" in agents

    [project] = at_autocoder(env, bob.phone)
    assert project["name"] == "todo-app"
    session_id = re.search(r"`(sess_[0-9a-f]+)`", started)
    assert session_id is not None
    assert project["sessions"] == [session_id.group(1)]
