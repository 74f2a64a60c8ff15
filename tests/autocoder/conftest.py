"""The reference AutoCoder server as a real process, and a real MCP client for it."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

SIGNING_KEY = "test-signing-key-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class AutoCoderServer:
    """`python -m autocoder.main` on a free port with its own data dir."""

    def __init__(self, **env: str) -> None:
        self.port = free_port()
        self.data_dir = Path(tempfile.mkdtemp(prefix="autocoder-test-"))
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        self.env = {
            **os.environ,
            "AUTOCODER_HOST": "127.0.0.1",
            "AUTOCODER_PORT": str(self.port),
            "AUTOCODER_DATA_DIR": str(self.data_dir),
            "AUTOCODER_SIGNING_KEY": SIGNING_KEY,
            # A developer's AutoCoder: /mcp open unless a test gives AUTOCODER_API_KEY.
            "WACODER_ENV": "development",
            # Its /livez and /readyz port: one per server, several run at once.
            "AUTOCODER_METRICS_PORT": str(free_port()),
            **env,
        }
        # The built-in generators are what these tests exercise, whatever the developer's shell has.
        if "OPENAI_API_KEY" not in env:
            self.env.pop("OPENAI_API_KEY", None)
        if "AUTOCODER_API_KEY" not in env:
            self.env.pop("AUTOCODER_API_KEY", None)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def mcp_url(self) -> str:
        return f"{self.base_url}/mcp"

    def start(self) -> AutoCoderServer:
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "autocoder.main"],
            env=self.env,
            cwd=self.data_dir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"autocoder exited: {self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"autocoder did not start: {self.log_path.read_text()[-3000:]}")

    def stop(self, timeout_s: float = 15) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("autocoder did not stop on SIGTERM") from None
        return self.proc.returncode

    def cleanup(self) -> None:
        shutil.rmtree(self.data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def autocoder() -> Iterator[AutoCoderServer]:
    server = AutoCoderServer().start()
    yield server
    assert server.stop() == 0
    server.cleanup()


@asynccontextmanager
async def mcp_client(url: str, headers: dict[str, str] | None = None) -> AsyncIterator[ClientSession]:
    async with (
        create_mcp_http_client(headers=headers) as http,
        streamable_http_client(url, http_client=http) as (read, write, _),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


async def call(
    session: ClientSession, tool: str, caller: str | None = "caller-a", **args: Any
) -> dict[str, Any]:
    """A tool call that must succeed; returns its structured result."""
    meta = {"caller": caller} if caller else None
    result = await session.call_tool(tool, args, meta=meta)
    assert not result.isError, f"{tool} failed: {result.content}"
    assert result.structuredContent is not None
    return result.structuredContent


async def call_error(session: ClientSession, tool: str, caller: str | None = "caller-a", **args: Any) -> str:
    """A tool call that must fail; returns its error text."""
    meta = {"caller": caller} if caller else None
    result = await session.call_tool(tool, args, meta=meta)
    assert result.isError, f"{tool} unexpectedly succeeded: {result.structuredContent}"
    return " ".join(getattr(c, "text", "") for c in result.content)


async def wait_finished(
    session: ClientSession, session_id: str, caller: str = "caller-a", timeout_s: float = 30
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        details = await call(session, "get_session_details", caller=caller, session_id=session_id)
        if details["status"] in ("succeeded", "failed"):
            return details
        await asyncio.sleep(0.1)
    raise AssertionError(f"session {session_id} did not finish: {details}")
