"""Fixtures for the mcp-bridge tests: the fake AutoCoder as a process, and the bridge as a
real `python -m mcp_bridge.main` (through the shared stack harness) with a gRPC stub to it."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from devtools.stack import Stack, free_port, port_open
from wacoder.v1 import bridge_pb2_grpc

from tests.harness import RedisServer, service_channel, stack_env, start_stack


class FakeAutoCoder:
    """tests/bridge/fake_autocoder.py as a process that can be stopped and restarted on its port."""

    def __init__(self, step_s: float = 0.35) -> None:
        self.step_s = step_s  # one session event every step_s seconds
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.proc: subprocess.Popen[bytes] | None = None
        workdir = Path(tempfile.mkdtemp(prefix="fake-autocoder-"))
        self.log = workdir / "fake.log"
        # Its state survives a restart, as a real AutoCoder's would.
        self.state = workdir / "state.json"

    def start(self) -> None:
        with self.log.open("ab") as log:
            args = [
                sys.executable,
                "-m",
                "tests.bridge.fake_autocoder",
                "--port",
                str(self.port),
                "--state",
                str(self.state),
                "--step-seconds",
                str(self.step_s),
            ]
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not port_open("127.0.0.1", self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"fake AutoCoder did not start:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"http://127.0.0.1:{self.port}/_fake/stats", timeout=5).json()

    def crash_on(self, tool: str, when: str = "before") -> None:
        """The next call of `tool` kills the process, before or after it did its work."""
        params = {"tool": tool, "when": when}
        httpx.post(f"http://127.0.0.1:{self.port}/_fake/crash_on", params=params, timeout=5)

    def call_log(self) -> list[str]:
        """Every call received, across restarts (read from the state file, so it works while stopped)."""
        return list(json.loads(self.state.read_text())["call_log"]) if self.state.exists() else []

    def calls(self, tool: str = "_total") -> int:
        return int(self.stats()["calls"].get(tool, 0))


class Bridge:
    def __init__(self, stack: Stack, env: dict[str, str]) -> None:
        self.stack = stack
        self.env = env
        self.channel = service_channel(env["MCP_BRIDGE_ADDR"], env)
        self.stub = bridge_pb2_grpc.McpBridgeServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()
        self.stack.stop()


BridgeFactory = Callable[..., Bridge]


@pytest.fixture
def fake_factory() -> Iterator[Callable[[], FakeAutoCoder]]:
    made: list[FakeAutoCoder] = []

    def make() -> FakeAutoCoder:
        fake = FakeAutoCoder()
        fake.start()
        made.append(fake)
        return fake

    yield make
    for fake in made:
        fake.stop()


@pytest.fixture
def bridge_factory(redis_server: RedisServer) -> Iterator[BridgeFactory]:
    made: list[Bridge] = []

    def make(autocoder_url: str, **overrides: str) -> Bridge:
        env = stack_env(redis_server.url, "http://127.0.0.1:9", AUTOCODER_MCP_URL=autocoder_url, **overrides)
        bridge = Bridge(start_stack(env, services=["mcp-bridge"]), env)
        made.append(bridge)
        return bridge

    yield make
    for bridge in made:
        bridge.close()


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAutoCoder]:
    server = FakeAutoCoder()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def bridge(redis_server: RedisServer, fake: FakeAutoCoder) -> Iterator[Bridge]:
    env = stack_env(
        redis_server.url,
        "http://127.0.0.1:9",
        AUTOCODER_MCP_URL=fake.url,
        MCP_CALL_TIMEOUT_S="2",
        AUTOCODER_API_KEY="test-key",
    )
    made = Bridge(start_stack(env, services=["mcp-bridge"]), env)
    yield made
    made.close()
