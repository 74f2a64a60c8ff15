"""What a colour's queues still hold, read from its services' depth gauges before it is scaled down:

- the agent's inbox: `wacoder_agent_inbox_depth` (entries not yet handled, per shard) on the
  agent's metrics port (9101);
- the notifier's outbox: `wacoder_notifier_outbox_depth` (messages not yet sent, per shard) on
  the notifier's metrics port (9103).

Each service computes its gauge from Redis when scraped (the colour's streams, every shard), so
one pod behind the colour's Service answers for all of them. Reached at a URL template
(`WACODER_METRICS_URL`, default `http://{service}.{namespace}.svc:{port}/metrics`; `{bot}`,
`{colour}`, `{component}` are filled in too), so a test or a port-forward can serve it. The chart's
NetworkPolicies let the operator's pods reach these two ports (`networkPolicy.operator`)."""

from __future__ import annotations

import re
from typing import Protocol

import aiohttp

from wacoder_operator.rollout import Backlog, Colour
from wacoder_operator.values import release_prefix

DEFAULT_METRICS_URL = "http://{service}.{namespace}.svc:{port}/metrics"
# component -> (its metrics port, the gauge of its queue): the contract of docs/architecture.md
GAUGES = {
    "agent": (9101, "wacoder_agent_inbox_depth"),
    "notifier": (9103, "wacoder_notifier_outbox_depth"),
}


class BacklogReader(Protocol):
    async def read(self, bot: str, namespace: str, colour: Colour) -> Backlog: ...


def gauge_total(text: str, metric: str) -> float | None:
    """The sum of a gauge's samples (every label set) in Prometheus' text format; None: absent."""
    pattern = re.compile(rf"^{re.escape(metric)}(?:\{{[^}}]*\}})?\s+(\S+)", re.MULTILINE)
    values = [float(value) for value in pattern.findall(text)]
    return sum(values) if values else None


class HttpBacklogReader:
    def __init__(self, url_template: str = DEFAULT_METRICS_URL, timeout_s: float = 5) -> None:
        self.url_template, self.timeout_s = url_template, timeout_s

    def url(self, bot: str, namespace: str, colour: Colour, component: str) -> str:
        port, _ = GAUGES[component]
        service = f"{release_prefix(bot, colour)}-{component}"
        return self.url_template.format(
            bot=bot, namespace=namespace, colour=colour.value, component=component, service=service, port=port
        )

    async def read(self, bot: str, namespace: str, colour: Colour) -> Backlog:
        counts: dict[str, int] = {}
        errors: list[str] = []
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            for component, (_, metric) in GAUGES.items():
                url = self.url(bot, namespace, colour, component)
                try:
                    async with http.get(url) as response:
                        text = await response.text()
                        if response.status != 200:
                            errors.append(f"{url}: HTTP {response.status}")
                            continue
                except (aiohttp.ClientError, TimeoutError) as error:
                    errors.append(f"{url}: {error!r}")
                    continue
                total = gauge_total(text, metric)
                if total is None:
                    errors.append(f"{url}: no {metric}")
                else:
                    counts[component] = int(total)
        # A queue that could not be read is not taken for empty: the old colour stays up.
        return Backlog(counts.get("agent", 0), counts.get("notifier", 0), "; ".join(errors) or None)
