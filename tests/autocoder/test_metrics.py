"""AutoCoder's own metrics (issue 13: session duration and completion by agent): a session run
over MCP moves each of its agents' counters once, and the session's, on the metrics port."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.autocoder.conftest import AutoCoderServer, call, mcp_client, wait_finished


@pytest.fixture(scope="module")
def own_autocoder() -> Iterator[AutoCoderServer]:
    """A server of this module's own: its counters start at zero."""
    server = AutoCoderServer().start()
    yield server
    server.stop()
    server.cleanup()


def scrape(server: AutoCoderServer) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    answer = httpx.get(f"http://127.0.0.1:{server.env['AUTOCODER_METRICS_PORT']}/metrics", timeout=5)
    assert answer.status_code == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


async def test_a_session_counts_each_agent_run_and_the_session(own_autocoder: AutoCoderServer) -> None:
    async with mcp_client(own_autocoder.mcp_url) as s:
        project = await call(s, "create_project", name="Notes", description="a notes API")
        queued = await call(
            s, "execute_coding_task", project_id=project["project_id"], task="build a notes REST API"
        )
        details = await wait_finished(s, queued["session_id"], timeout_s=90)
    assert details["status"] == "succeeded", details

    samples = scrape(own_autocoder)

    def value(name: str, **labels: str) -> float:
        return samples.get((name, frozenset(labels.items())), 0.0)

    for agent in queued["agents"]:  # planner, developer, tester
        assert value("autocoder_agent_runs_total", agent=agent, status="done") == 1, agent
        assert value("autocoder_agent_runs_total", agent=agent, status="failed") == 0, agent
        assert value("autocoder_agent_run_seconds_count", agent=agent) == 1, agent
    # The tester's run includes the sandboxed pytest run: it takes longer than nothing.
    assert value("autocoder_agent_run_seconds_sum", agent="tester") > 0
    assert value("autocoder_sessions_finished_total", status="succeeded") == 1
    assert value("autocoder_session_seconds_count", status="succeeded") == 1
    assert value("autocoder_sessions_running") == 0
    session_s = value("autocoder_session_seconds_sum", status="succeeded")
    agents_s = sum(value("autocoder_agent_run_seconds_sum", agent=a) for a in queued["agents"])
    assert session_s >= agents_s > 0, "a session lasts at least as long as its agents together"
