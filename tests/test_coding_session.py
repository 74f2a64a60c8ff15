"""A coding session end to end: WhatsApp -> agent -> bridge -> the reference AutoCoder over
real MCP, progress relayed back, files downloadable and really working; and what the user
sees while AutoCoder is down."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis
from devtools.stack import Stack
from wacoder import keys, templates

from tests.harness import Conversation, TwilioSim

SESSION_ID = re.compile(r"`(sess_[0-9a-f]+)`")
URL = re.compile(r"(http://\S+)")


@pytest.fixture(scope="module")
def stack_overrides() -> dict[str, str]:
    return {"BREAKER_FAILURE_THRESHOLD": "2", "BREAKER_RESET_TIMEOUT_S": "2"}


@pytest.fixture
def user(new_user: Callable[[], Conversation]) -> Conversation:
    return new_user()


def test_build_a_rest_api_from_whatsapp(
    user: Conversation, twilio_sim: TwilioSim, env: dict[str, str], tmp_path: Path
) -> None:
    user.ask("/new shop")
    started = user.ask("/run build a REST API with user authentication")
    session_id = SESSION_ID.search(started).group(1)

    # The seed's session:{id} record: readable by operators, with no number and no task text.
    record = json.loads(redis.Redis.from_url(env["REDIS_URL"]).get(keys.session(session_id)))
    assert record["session_id"] == session_id and record["project_id"].startswith("proj_")
    assert user.phone not in json.dumps(record) and "REST API" not in json.dumps(record)

    summary = user.wait_progress(r"^🏁 Session", timeout_s=120)
    assert session_id in summary and "succeeded" in summary
    for agent in ("planner", "developer", "tester"):
        assert agent in summary
    passed = int(re.search(r"Tests: (\d+) passed, 0 failed", summary).group(1))
    assert passed > 0
    # Each agent's finish was reported (batched: a fast session folds them into the summary),
    # and progress messages were at least a batch interval apart.
    for agent in ("planner", "developer", "tester"):
        assert re.search(rf"^(\(\d/\d\) )?✅ \*{agent}\* done: ", "\n".join(user.progress), re.M)
    times = [
        m["received_at"]
        for m in twilio_sim.messages(f"whatsapp:{user.phone}")
        if re.match(r"^(✅|❌|⏭️) \*\w+\* |^🏁", m["body"])
    ]
    assert all(b - a >= 4.9 for a, b in itertools.pairwise(times)), times

    listing = user.ask("/files")
    urls = URL.findall(listing)
    assert urls and all(session_id not in u for u in urls)  # short signed links say nothing
    entries = re.findall(r"^- (\S+) \(\d+ B\): (http://\S+)$", listing, re.M)
    assert len(entries) == len(urls) - 1  # and one more: the zip (tests/test_files_and_cancel.py)
    for path, url in entries:
        answer = httpx.get(url)
        assert answer.status_code == 200, (path, answer.status_code)
        target = tmp_path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(answer.content)
    python = [p for p, _ in entries if p.endswith(".py")]
    assert any("test" in p for p in python) and any("test" not in p for p in python)
    for path in python:
        compile((tmp_path / path).read_text(), path, "exec")  # real Python, not placeholders

    ended = json.loads(redis.Redis.from_url(env["REDIS_URL"]).get(keys.session(session_id)))
    assert ended["status"] == "succeeded" and ended["test_results"]["passed"] == passed

    # The generated project's tests pass when we run them ourselves.
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"{passed} passed" in run.stdout


def test_progress_relay_survives_an_agent_restart(user: Conversation, stack: Stack) -> None:
    user.ask("/new relay")
    started = user.ask("/run write tests for the utilities")
    session_id = SESSION_ID.search(started).group(1)
    stack["agent"].kill()
    stack["agent"].start()
    stack["agent"].wait_ready()

    summary = user.wait_progress(rf"^(🏁|❌) Session `{session_id}`", timeout_s=120)
    assert "succeeded" in summary
    time.sleep(6)  # anything duplicated would arrive within a batch interval
    finals = [p for p in user.progress if "🏁 Session" in p]
    assert len(finals) == 1


def test_autocoder_down_then_back(user: Conversation, stack: Stack) -> None:
    assert "You have no projects" in user.ask("/list")
    stack["autocoder"].stop()
    try:
        # A cached read still answers (the seed's graceful degradation)...
        assert "You have no projects" in user.ask("/list")
        # ...anything that needs AutoCoder gets the connection template, within seconds.
        for attempt in range(3):
            began = time.monotonic()
            assert user.ask(f"/new down-{attempt}", timeout_s=15) == templates.CONNECTION
            assert time.monotonic() - began < 10
        log = Path(stack["mcp-bridge"].log_path).read_text()
        assert '"to_state": "open"' in log
    finally:
        stack["autocoder"].start()
        stack["autocoder"].wait_ready()
    deadline = time.monotonic() + 30
    while (reply := user.ask("/new back-again")) == templates.CONNECTION and time.monotonic() < deadline:
        time.sleep(1)
    assert "Created project *back-again*" in reply
    assert '"to_state": "closed"' in Path(stack["mcp-bridge"].log_path).read_text()
