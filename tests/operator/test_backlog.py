"""The drain's reader (wacoder_operator.backlog.HttpBacklogReader) against an HTTP server that
serves what the agent and the notifier serve on their metrics ports: the sum over shards of
their own depth gauges (names taken from the services' metrics modules), and a queue that cannot
be read (refused, an HTTP error, a gauge missing) never taken for an empty one."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from agent import metrics as agent_metrics
from aiohttp import web
from aiohttp.test_utils import TestServer
from devtools.stack import free_port
from notifier import metrics as notifier_metrics
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from wacoder_operator.backlog import GAUGES, HttpBacklogReader
from wacoder_operator.rollout import Backlog, Colour


def exposition(name: str, depths: list[int]) -> bytes:
    registry = CollectorRegistry()
    gauge = Gauge(name, "depth", ["shard"], registry=registry)
    for shard, depth in enumerate(depths):
        gauge.labels(str(shard)).set(depth)
    # other series beside it, one whose name starts the same
    Counter(f"{name}_resets", "not a depth", registry=registry).inc(7)
    return generate_latest(registry)


class Services:
    def __init__(self) -> None:
        self.answers: dict[str, tuple[int, bytes]] = {}

    async def metrics(self, request: web.Request) -> web.Response:
        status, body = self.answers[request.match_info["service"]]
        return web.Response(status=status, body=body, content_type="text/plain")


@pytest.fixture
async def served() -> AsyncIterator[tuple[Services, str]]:
    services = Services()
    app = web.Application()
    app.router.add_get("/{service}/metrics", services.metrics)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield services, f"http://127.0.0.1:{server.port}/{{service}}/metrics"
    finally:
        await server.close()


def test_the_gauges_are_the_services_own() -> None:
    assert GAUGES["agent"][1] == agent_metrics.INBOX_DEPTH.describe()[0].name
    assert GAUGES["notifier"][1] == notifier_metrics.OUTBOX_DEPTH.describe()[0].name


async def test_it_sums_each_queue_over_its_shards(served: tuple[Services, str]) -> None:
    services, url = served
    services.answers["acme-green-agent"] = (200, exposition(GAUGES["agent"][1], [2, 0, 5, 0]))
    services.answers["acme-green-notifier"] = (200, exposition(GAUGES["notifier"][1], [0, 1, 0, 0]))
    assert await HttpBacklogReader(url).read("acme", "bots", Colour.GREEN) == Backlog(inbox=7, outbox=1)
    services.answers["acme-green-agent"] = (200, exposition(GAUGES["agent"][1], [0, 0, 0, 0]))
    services.answers["acme-green-notifier"] = (200, exposition(GAUGES["notifier"][1], [0, 0, 0, 0]))
    assert await HttpBacklogReader(url).read("acme", "bots", Colour.GREEN) == Backlog()


async def test_a_queue_that_cannot_be_read_is_not_empty(served: tuple[Services, str]) -> None:
    services, url = served
    services.answers["acme-blue-agent"] = (500, b"refresh failed")
    services.answers["acme-blue-notifier"] = (200, b"# nothing here\n")
    backlog = await HttpBacklogReader(url).read("acme", "bots", Colour.BLUE)
    assert backlog.error is not None
    assert "acme-blue-agent/metrics: HTTP 500" in backlog.error
    assert "acme-blue-notifier/metrics: no wacoder_notifier_outbox_depth" in backlog.error
    refused = HttpBacklogReader(f"http://127.0.0.1:{free_port()}/{{service}}/metrics", timeout_s=2)
    unreachable = await refused.read("acme", "bots", Colour.BLUE)
    assert unreachable.error is not None and "acme-blue-agent" in unreachable.error


def test_the_default_urls_are_the_colours_metrics_services() -> None:
    reader = HttpBacklogReader()
    assert reader.url("acme", "bots", Colour.BLUE, "agent") == "http://acme-blue-agent.bots.svc:9101/metrics"
    assert reader.url("acme", "bots", Colour.GREEN, "notifier") == (
        "http://acme-green-notifier.bots.svc:9103/metrics"
    )
