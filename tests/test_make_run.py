"""`make run`'s supervisor as a newcomer runs it: embedded defaults, every service up and
its health port printed, a crashed or hung service restarted, and a clean stop on SIGTERM."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet
from wacoder.v1 import bridge_pb2, bridge_pb2_grpc

from tests.harness import MakeRun, make_run_env, service_channel

ROOT = Path(__file__).resolve().parents[1]
# The services with a health port of their own (the webhook serves /livez, /readyz on its port).
HEALTH_PORTS = {
    "AGENT": "agent",
    "MCP_BRIDGE": "mcp-bridge",
    "NOTIFIER": "notifier",
    "AUTOCODER": "autocoder",
}


# The development secrets `make run` generates into .run/ (issue 9), and their files.
GENERATED = {
    "STATE_ENCRYPTION_KEY": "state.key",
    "PHONE_HASH_SALT": "phone_hash.salt",
    "SERVICE_TOKEN": "service.token",
    "AUTOCODER_API_KEY": "autocoder.key",
}


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[tuple[MakeRun, dict[str, str]]]:
    # None of them from the developer's shell: make run is to generate each.
    env = {k: v for k, v in make_run_env().items() if k not in GENERATED}
    sup = MakeRun(tmp_path, env)
    yield sup, env
    if sup.proc.poll() is None:
        sup.proc.kill()


def health(env: dict[str, str]) -> int:
    try:
        return httpx.get(env["PUBLIC_BASE_URL"] + "/health", timeout=5).status_code
    except httpx.HTTPError:
        return 0


def wait_healthy(env: dict[str, str], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while health(env) != 200:
        assert time.monotonic() < deadline, "never healthy"
        time.sleep(0.2)


def test_make_run_supervises_the_platform(supervisor: tuple[MakeRun, dict[str, str]], tmp_path: Path) -> None:
    sup, env = supervisor
    sup.wait_line(r"Ctrl-C stops everything", timeout_s=90)
    assert sup.wait_line(r"embedded Redis: \S*redis-server on redis://127.0.0.1:\d+")
    assert sup.wait_line(r"make chat")
    page = sup.wait_line(r"WhatsApp simulator: open (http://\S+)").group(1)
    assert page == f"http://127.0.0.1:{env['SIMULATOR_PORT']}"
    assert "WhatsApp" in httpx.get(page, timeout=5).text
    wait_healthy(env)
    # Embedded defaults: every development secret generated into .run/ (owner-only, kept for the
    # next run) and said so; logs in .run/logs.
    said = sup.wait_line(r"development secrets generated into \.run/ \(kept across runs\): (.+)$").group(1)
    assert sorted(said.split(", ")) == sorted(GENERATED)
    for name in GENERATED.values():
        secret = tmp_path / ".run" / name
        assert secret.read_text().strip(), name
        assert secret.stat().st_mode & 0o777 == 0o600, name
    Fernet((tmp_path / ".run" / "state.key").read_text().strip())  # a real key
    # The services run with them: a gRPC call carrying the generated token is served.
    token = {"SERVICE_TOKEN": (tmp_path / ".run" / "service.token").read_text().strip()}
    with service_channel(env["MCP_BRIDGE_ADDR"], token) as channel:
        tools = bridge_pb2_grpc.McpBridgeServiceStub(channel).ListTools(
            bridge_pb2.ListToolsRequest(), timeout=10
        )
        assert tools.tools
    assert {p.name for p in (tmp_path / ".run" / "logs").iterdir()} >= {"webhook.log", "agent.log"}

    agent = sup.pid("agent")
    os.kill(agent, signal.SIGKILL)
    sup.wait_line(r"agent exited .*restarting")
    time.sleep(1.5)
    wait_healthy(env)

    # Every health port is printed, and answers.
    for prefix, name in HEALTH_PORTS.items():
        port = env[f"{prefix}_METRICS_PORT"]
        sup.wait_line(rf"\] {name}\s+pid \d+ on \S+, health http://127.0.0.1:{port}/readyz")
        for path in ("/livez", "/readyz"):
            assert httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5).status_code == 200

    # A hung process (it runs, but its event loop answers nothing) is restarted too.
    notifier = sup.pid("notifier")
    os.kill(notifier, signal.SIGSTOP)
    sup.wait_line(rf"notifier did not answer /livez \(pid {notifier}\); restarting", timeout_s=30)
    restarted = int(sup.wait_line(r"notifier restarted: pid (\d+)", timeout_s=30).group(1))
    assert restarted != notifier
    sup.wait_line(r"\] notifier ready$", timeout_s=60)
    assert httpx.get(f"http://127.0.0.1:{env['NOTIFIER_METRICS_PORT']}/readyz", timeout=5).status_code == 200

    children = [sup.pid(name) for name in ("webhook", "mcp-bridge", "autocoder", "simulator")] + [restarted]
    sup.proc.send_signal(signal.SIGTERM)
    assert sup.proc.wait(30) == 0
    sup.wait_line(r"stopped\.")
    for pid in children:
        assert (
            not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
        )
    assert health(env) == 0
