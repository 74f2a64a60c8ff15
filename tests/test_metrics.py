"""Metrics on every service (issue 13): after a scripted conversation each service's /metrics
shows the right counters moved by the right amounts, every exposition passes `promtool check
metrics`, and no label value anywhere is a phone number or a hash."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest
import redis.asyncio as aioredis
from agent import metrics as agent_metrics
from devtools.stack import Stack
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from wacoder import keys

from tests.harness import Conversation, RedisServer, TwilioSim

SERVICES = ("webhook", "agent", "mcp-bridge", "notifier", "autocoder")
PORT_VARIABLE = {
    "agent": "AGENT_METRICS_PORT",
    "mcp-bridge": "MCP_BRIDGE_METRICS_PORT",
    "notifier": "NOTIFIER_METRICS_PORT",
    "autocoder": "AUTOCODER_METRICS_PORT",
}
MESSAGES = 5  # the conversation's
SESSION_ID = re.compile(r"Started session `([^`]+)`")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def twilio_sim() -> Iterator[TwilioSim]:
    """A Twilio of this module's own that posts status callbacks (sent, delivered) for every
    message, as the real one does: the webhook's delivery funnel."""
    sim = TwilioSim(status_callbacks=True)
    yield sim
    sim.stop()


@pytest.fixture(scope="module")
def module_redis(own_redis: RedisServer) -> RedisServer:
    return own_redis  # outbox depths are counted over the whole Redis


def metrics_url(env: dict[str, str], service: str) -> str:
    if service == "webhook":
        return env["PUBLIC_BASE_URL"] + "/metrics"
    return f"http://127.0.0.1:{env[PORT_VARIABLE[service]]}/metrics"


def exposition(env: dict[str, str], service: str) -> str:
    answer = httpx.get(metrics_url(env, service), timeout=5)
    assert answer.status_code == 200, (service, answer.text)
    assert answer.headers["content-type"].startswith("text/plain"), answer.headers
    return answer.text


def scrape(env: dict[str, str], service: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(exposition(env, service))
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


@pytest.fixture(scope="module")
def conversation(
    stack: Stack, env: dict[str, str], twilio_sim: TwilioSim
) -> tuple[dict[str, Samples], dict[str, Samples]]:
    """Scrapes of every service before and after: /help, /new shop, a free-text task (its
    coding session run to the end), /agents, and /status of a session that does not exist."""
    user = Conversation(env, twilio_sim, "+15559990013")  # its own Redis: nobody else's number
    before = {service: scrape(env, service) for service in SERVICES}
    assert "/new" in user.ask("/help")
    assert "shop" in user.ask("/new shop")
    started = user.ask("build a REST API with auth")
    session_id = SESSION_ID.search(started)
    assert session_id, started
    user.wait_progress(rf"Session `{session_id.group(1)}` in \*shop\*: \*(succeeded|failed)\*", timeout_s=90)
    assert "AutoCoder agents" in user.ask("/agents")
    assert "not found" in user.ask("/status no-such-session")  # an error of one type
    time.sleep(0.5)  # the last sends' records (client-side gRPC metrics are recorded just after)
    after = {service: scrape(env, service) for service in SERVICES}
    return before, after


def delta(
    scrapes: tuple[dict[str, Samples], dict[str, Samples]], service: str, name: str, **labels: str
) -> float:
    before, after = scrapes
    return total(after[service], name, **labels) - total(before[service], name, **labels)


def test_the_webhook_counts_the_messages_it_accepted(conversation: tuple[dict[str, Samples], ...]) -> None:
    assert delta(conversation, "webhook", "wacoder_webhook_messages_total", outcome="accepted") == MESSAGES
    assert delta(conversation, "webhook", "wacoder_webhook_latency_seconds_count") == MESSAGES


def test_the_agent_counts_messages_replies_sessions_and_progress(
    conversation: tuple[dict[str, Samples], ...],
) -> None:
    def moved(name: str, **labels: str) -> float:
        return delta(conversation, "agent", name, **labels)

    assert moved("wacoder_agent_messages_processed_total") == MESSAGES
    assert moved("wacoder_agent_processing_seconds_count") == MESSAGES
    assert moved("wacoder_agent_end_to_end_seconds_count") == MESSAGES
    assert moved("wacoder_agent_errors_total", type="tool_error") == 1
    assert moved("wacoder_agent_errors_total") == 1
    assert moved("wacoder_agent_replies_total", kind="command") == MESSAGES - 1
    assert moved("wacoder_agent_replies_total", kind="free_text") == 1
    assert moved("wacoder_agent_sessions_started_total") == 1
    assert moved("wacoder_agent_sessions_completed_total") == 1
    assert moved("wacoder_agent_session_seconds_count") == 1
    assert moved("wacoder_agent_progress_messages_total", kind="final") == 1
    # gRPC, both sides: the webhook hands each message over, the agent sends every reply and
    # every progress message through the notifier.
    sends = MESSAGES + moved("wacoder_agent_progress_messages_total")
    assert (
        moved("wacoder_grpc_server_handled_total", method="/wacoder.v1.AgentService/SubmitMessage", code="OK")
        == MESSAGES
    )
    assert (
        moved("wacoder_grpc_client_handled_total", method="/wacoder.v1.NotifierService/Send", code="OK")
        == sends
    )
    assert (
        moved("wacoder_grpc_client_handling_seconds_count", method="/wacoder.v1.NotifierService/Send")
        == sends
    )
    assert delta(conversation, "webhook", "wacoder_grpc_client_handled_total", code="OK") >= MESSAGES


def test_the_bridge_times_tool_calls_by_tool_and_outcome(
    conversation: tuple[dict[str, Samples], ...],
) -> None:
    def moved(name: str, **labels: str) -> float:
        return delta(conversation, "mcp-bridge", name, **labels)

    assert moved("wacoder_bridge_tool_seconds_count", tool="create_project", outcome="ok") == 1
    assert moved("wacoder_bridge_tool_seconds_count", tool="execute_coding_task", outcome="ok") == 1
    assert moved("wacoder_bridge_tool_seconds_count", outcome="ok") >= 2
    assert moved("wacoder_bridge_tool_seconds_count", tool="get_session_details", outcome="tool_error") == 1
    assert (
        moved("wacoder_grpc_server_handled_total", method="/wacoder.v1.McpBridgeService/CallTool", code="OK")
        >= 2
    )
    assert moved("wacoder_grpc_server_handled_total", method="/wacoder.v1.McpBridgeService/WatchSession") == 1
    _, after = conversation
    assert value(after["mcp-bridge"], "wacoder_bridge_breaker_state") == 0
    # The summary fetches the session's files: a cacheable call, not cached yet.
    assert moved("wacoder_bridge_cache_total", tool="get_session_files", result="miss") >= 1


def test_the_notifier_counts_twilio_sends_and_its_outbox(
    conversation: tuple[dict[str, Samples], ...],
) -> None:
    def moved(name: str, **labels: str) -> float:
        return delta(conversation, "notifier", name, **labels)

    sends = MESSAGES + delta(conversation, "agent", "wacoder_agent_progress_messages_total")
    assert moved("wacoder_notifier_queued_total") == sends
    # From the webhook to Twilio: one observation per reply, none for progress messages.
    assert moved("wacoder_notifier_end_to_end_seconds_count") == MESSAGES
    assert moved("wacoder_notifier_twilio_sends_total", status="accepted") >= sends  # long texts go in parts
    assert moved("wacoder_notifier_dead_letters_total") == 0
    assert moved("wacoder_notifier_duplicates_dropped_total") == 0
    _, after = conversation
    depths = {dict(ls)["shard"] for (n, ls) in after["notifier"] if n == "wacoder_notifier_outbox_depth"}
    assert depths == {str(shard) for shard in range(16)}  # STREAM_SHARDS, its default
    assert total(after["notifier"], "wacoder_notifier_outbox_depth") == 0  # all sent
    assert total(after["notifier"], "wacoder_notifier_outbox_oldest_age_seconds") == 0


def test_the_agent_reports_its_inbox_depth_per_shard(conversation: tuple[dict[str, Samples], ...]) -> None:
    _, after = conversation
    shards = {dict(ls)["shard"] for (n, ls) in after["agent"] if n == "wacoder_agent_inbox_depth"}
    assert shards == {str(shard) for shard in range(16)}
    assert total(after["agent"], "wacoder_agent_inbox_depth") == 0  # all handled (and kept a while)
    assert total(after["agent"], "wacoder_agent_inbox_oldest_age_seconds") == 0


def test_the_agent_counts_active_users_without_naming_them(
    conversation: tuple[dict[str, Samples], ...],
) -> None:
    _, after = conversation  # the module's own Redis: this conversation's user is the only one
    for window in ("15m", "1h", "24h"):
        assert value(after["agent"], "wacoder_agent_active_users", window=window) == 1


def test_inbox_depth_counts_undelivered_and_pending_entries(module_redis: RedisServer) -> None:
    """refresh_inbox against a stream of its own (Redis database 1, away from the stack): one
    entry handled, one delivered but not acknowledged, two not yet delivered."""

    async def check() -> tuple[float, float, float]:
        redis = aioredis.Redis.from_url(module_redis.url.rsplit("/", 1)[0] + "/1", decode_responses=True)
        stream = keys.inbox_stream(3)
        try:
            await redis.delete(stream)
            ids = [await redis.xadd(stream, {"n": str(n)}) for n in range(4)]
            await redis.xgroup_create(stream, keys.INBOX_GROUP, id="0")
            await redis.xreadgroup(keys.INBOX_GROUP, "c", {stream: ">"}, count=2)
            await redis.xack(stream, keys.INBOX_GROUP, ids[0])
            await asyncio.sleep(0.2)
            await agent_metrics.refresh_inbox(redis)
        finally:
            await redis.delete(stream)
            await redis.aclose()
        sample = REGISTRY.get_sample_value
        return (
            sample("wacoder_agent_inbox_depth", {"shard": "3"}) or 0.0,
            sample("wacoder_agent_inbox_oldest_age_seconds", {"shard": "3"}) or 0.0,
            sample("wacoder_agent_inbox_depth", {"shard": "4"}) or 0.0,
        )

    depth, age, other = asyncio.run(check())
    assert depth == 3 and 0.2 <= age < 5 and other == 0


def test_the_webhook_counts_the_delivery_funnel(
    conversation: tuple[dict[str, Samples], ...], env: dict[str, str]
) -> None:
    """Every message Twilio accepted reports sent, then delivered, to the status callback."""
    before, _ = conversation
    accepted = delta(conversation, "notifier", "wacoder_notifier_twilio_sends_total", status="accepted")
    name = "wacoder_webhook_status_callbacks_total"
    deadline = time.monotonic() + 15
    while True:
        now = scrape(env, "webhook")
        moved = {
            s: total(now, name, status=s) - total(before["webhook"], name, status=s)
            for s in ("sent", "delivered")
        }
        if moved == {"sent": accepted, "delivered": accepted} or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert moved == {"sent": accepted, "delivered": accepted}
    assert total(now, name, status="failed") == 0


@pytest.mark.parametrize("service", SERVICES)
def test_promtool_accepts_every_exposition(
    conversation: tuple[dict[str, Samples], ...], env: dict[str, str], service: str
) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian's `prometheus` package; .ci/run installs it)")
    checked = subprocess.run(
        [promtool, "check", "metrics"],
        input=exposition(env, service),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert checked.returncode == 0, (service, checked.stdout, checked.stderr)


# A phone number (E.164 or its digits), or a hash of 16 hex digits or more.
PRIVATE = re.compile(r"\+?\d{8,15}|[0-9a-f]{16,}", re.I)


def test_no_label_value_is_a_phone_number_or_a_hash(
    conversation: tuple[dict[str, Samples], ...], env: dict[str, str]
) -> None:
    _, after = conversation
    for service, samples in after.items():
        for name, labels in samples:
            for label, label_value in labels:
                if label == "le" or label == "quantile":
                    continue
                assert not PRIVATE.search(label_value), (service, name, label, label_value)
