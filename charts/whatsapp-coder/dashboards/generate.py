"""The Grafana dashboards of WhatsApp-Coder, as code (grafana-foundation-sdk).

`make dashboards` runs this and writes overview.json, autocoder.json and rollout.json beside it;
the chart ships those files as ConfigMaps for Grafana's dashboard sidecar
(templates/dashboards.yaml), and tests/deploy/test_dashboards.py fails when they differ from
what this produces. Edit here, never the JSON.

Every query filters on the labels the chart's ServiceMonitors put on every series: `namespace`,
`bot` (the pods' whatsappcoder.dev/bot label), `colour` (blue or green) and `component`
(webhook, agent, mcp-bridge, notifier, autocoder). tests/test_prometheus.py runs every query
against a real Prometheus scraping the running platform and fails on one that returns nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from grafana_foundation_sdk.builders import bargauge, stat, timeseries
from grafana_foundation_sdk.builders.common import ReduceDataOptions, StackingConfig, VizLegendOptions
from grafana_foundation_sdk.builders.dashboard import (
    Dashboard,
    DatasourceVariable,
    QueryVariable,
    Row,
    ThresholdsConfig,
)
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import (
    BarGaugeDisplayMode,
    LegendDisplayMode,
    LegendPlacement,
    StackingMode,
)
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    Threshold,
    ThresholdsMode,
    ValueMap,
    ValueMappingResult,
    VariableOption,
    VariableRefresh,
    VariableSort,
)

HERE = Path(__file__).resolve().parent
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")

# The label filters of every query. The Overview and AutoCoder dashboards show the colours
# chosen in $colour (all by default); the Rollout dashboard compares them side by side.
BOT = 'namespace="$namespace", bot="$bot"'
SEL = BOT + ', colour=~"$colour"'
RATE = "$__rate_interval"
COMPONENTS = "webhook|agent|mcp-bridge|notifier|autocoder"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


def q(expr: str, legend: str) -> Query:
    return Query(expr, legend)


def _targets(queries: Sequence[Query]) -> list[Dataquery]:
    return [
        Dataquery().expr(query.expr).legend_format(query.legend).ref_id(chr(ord("A") + n)).range()
        for n, query in enumerate(queries)
    ]


def graph(
    title: str, unit: str, description: str, *queries: Query, stacked: bool = False, width: int = 12
) -> timeseries.Panel:
    """A time series panel: every series in the legend as a table with its mean and max."""
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .min(0)
        .span(width)
        .height(8)
        .fill_opacity(10 if not stacked else 40)
        .legend(
            VizLegendOptions()
            .display_mode(LegendDisplayMode.TABLE)
            .placement(LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["mean", "max", "lastNotNull"])
        )
    )
    if stacked:
        panel = panel.stacking(StackingConfig().mode(StackingMode.NORMAL))
    for target in _targets(queries):
        panel = panel.with_target(target)
    return panel


def single(
    title: str,
    unit: str,
    description: str,
    *queries: Query,
    width: int = 6,
    warn: float | None = None,
    bad: float | None = None,
    mappings: dict[str, tuple[str, str]] | None = None,
) -> stat.Panel:
    """A stat panel of the last value; `warn` and `bad` colour it amber and red from there up."""
    steps = [Threshold(value=None, color="green")]
    if warn is not None:
        steps.append(Threshold(value=warn, color="orange"))
    if bad is not None:
        steps.append(Threshold(value=bad, color="red"))
    panel = (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(width)
        .height(5)
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .thresholds(ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(steps))
    )
    if mappings:
        options = {
            value: ValueMappingResult(text=text, color=colour, index=n)
            for n, (value, (text, colour)) in enumerate(mappings.items())
        }
        panel = panel.mappings([ValueMap(options=options)])
    for target in _targets(queries):
        panel = panel.with_target(target)
    return panel


def bars(title: str, unit: str, description: str, *queries: Query, width: int = 12) -> bargauge.Panel:
    """Horizontal bars of totals over the dashboard's time range (a funnel)."""
    panel = (
        bargauge.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .min(0)
        .span(width)
        .height(8)
        .display_mode(BarGaugeDisplayMode.GRADIENT)
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
    for target in _targets(queries):
        panel = panel.with_target(target.instant())
    return panel


def quantiles(
    metric: str, selector: str, by: str = "", levels: Sequence[float] = (0.5, 0.9, 0.99)
) -> list[Query]:
    """p50/p90/p99 (or `levels`) of a histogram, per `by` labels if given."""
    group = f"{by}, le" if by else "le"
    prefix = "{{" + by + "}} " if by else ""
    return [
        q(
            f"histogram_quantile({level}, sum by ({group}) (rate({metric}_bucket{{{selector}}}[{RATE}])))",
            f"{prefix}p{round(level * 100)}",
        )
        for level in levels
    ]


def variables(dashboard: Dashboard, with_colour: bool) -> Dashboard:
    """$datasource (any Prometheus), then $namespace, $bot and (maybe) $colour, each offering
    the values that the webhook's scrape targets carry."""
    dashboard = dashboard.with_variable(
        DatasourceVariable("datasource").label("Prometheus").type("prometheus")
    )
    chain = [
        ("namespace", "Namespace", 'label_values(up{component="webhook"}, namespace)'),
        ("bot", "Bot", 'label_values(up{component="webhook", namespace="$namespace"}, bot)'),
    ]
    if with_colour:
        chain.append(
            ("colour", "Colour", f'label_values(up{{component="webhook", {BOT}}}, colour)'),
        )
    for name, label, query in chain:
        variable = (
            QueryVariable(name)
            .label(label)
            .datasource(DATASOURCE)
            .query(query)
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
        )
        if name == "colour":
            # Every colour by default; a regex matcher takes the choices.
            variable = (
                variable.multi(True)
                .include_all(True)
                .all_value(".*")
                .current(VariableOption(selected=True, text="All", value="$__all"))
            )
        dashboard = dashboard.with_variable(variable)
    return dashboard


def base(uid: str, title: str, description: str, with_colour: bool = True) -> Dashboard:
    dashboard = (
        Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["whatsapp-coder", "generated"])
        .time("now-6h", "now")
        .refresh("30s")
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .timezone("browser")
    )
    return variables(dashboard, with_colour)


def per_shard_total(metric: str, selector: str, by: str = "colour") -> str:
    """Every replica reports every shard of its colour (the gauges are read from Redis on
    scrape), so replicas are de-duplicated per shard before shards are added up."""
    return f"sum by ({by}) (max by ({by}, shard) ({metric}{{{selector}}}))"


def overview() -> Dashboard:
    return (
        base(
            "wacoder-overview",
            "WhatsApp-Coder / Overview",
            "Traffic, latency, errors, queues and delivery of one bot: what users see.",
        )
        .with_row(Row("Traffic"))
        .with_panel(
            graph(
                "Inbound messages by outcome",
                "reqps",
                "What the webhook answered Twilio: accepted, duplicate (a Twilio retry), refused "
                "(unauthorized, rate_limited, bad_signature, bad_request) or unavailable (503: Redis).",
                q(f"sum by (outcome) (rate(wacoder_webhook_messages_total{{{SEL}}}[{RATE}]))", "{{outcome}}"),
                stacked=True,
            )
        )
        .with_panel(
            graph(
                "Replies by kind",
                "cps",
                "Replies the agent computed: slash commands, free text (LLM or offline router), empty.",
                q(f"sum by (kind) (rate(wacoder_agent_replies_total{{{SEL}}}[{RATE}]))", "{{kind}}"),
                stacked=True,
                width=8,
            )
        )
        .with_panel(
            single(
                "Active users",
                "short",
                "Distinct users with a message processed in the window (from Redis, every replica's).",
                q(f"max by (window) (wacoder_agent_active_users{{{SEL}}})", "{{window}}"),
                width=8,
            )
        )
        .with_panel(
            single(
                "Pods up",
                "short",
                "Scrape targets answering, per service.",
                q(
                    f'sum by (component) (up{{{SEL}, component=~"{COMPONENTS}"}})',
                    "{{component}}",
                ),
                width=8,
            )
        )
        .with_row(Row("Latency"))
        .with_panel(
            graph(
                "Webhook ack latency",
                "s",
                "Time to answer Twilio. Twilio gives a webhook 15 s; we answer in milliseconds "
                "(the histogram tops out at 2.5 s).",
                *quantiles("wacoder_webhook_latency_seconds", SEL),
                width=8,
            )
        )
        .with_panel(
            graph(
                "End to end: accepted → reply accepted by Twilio",
                "s",
                "From the webhook accepting a message to Twilio accepting its reply: what the user waits.",
                *quantiles("wacoder_notifier_end_to_end_seconds", SEL),
                width=8,
            )
        )
        .with_panel(
            graph(
                "Agent: accepted → reply queued",
                "s",
                "From the webhook accepting a message to its reply queued at the notifier.",
                *quantiles("wacoder_agent_end_to_end_seconds", SEL),
                width=8,
            )
        )
        .with_row(Row("Errors"))
        .with_panel(
            graph(
                "Errors answered, by type",
                "cps",
                "Messages answered with an error instead of what was asked: autocoder_unavailable, "
                "tool_error, llm_unavailable, internal.",
                q(f"sum by (type) (rate(wacoder_agent_errors_total{{{SEL}}}[{RATE}]))", "{{type}}"),
                stacked=True,
                width=8,
            )
        )
        .with_panel(
            graph(
                "gRPC calls not OK, by method (callers' view)",
                "percentunit",
                "Share of each method's calls that ended with a status other than OK, as the calling "
                "service saw it (a server that is down is only seen here).",
                q(
                    "1 - sum by (method) "
                    f'(rate(wacoder_grpc_client_handled_total{{{SEL}, code="OK"}}[{RATE}]))'
                    f" / sum by (method) (rate(wacoder_grpc_client_handled_total{{{SEL}}}[{RATE}]))",
                    "{{method}}",
                ),
                width=8,
            )
        )
        .with_panel(
            graph(
                "Twilio sends by result",
                "cps",
                "The notifier's requests to Twilio's Messages API: accepted, or the HTTP status and "
                "Twilio error code (429 and 5xx are retried; other 4xx dead-letter).",
                q(
                    "sum by (status, error_code) "
                    f"(rate(wacoder_notifier_twilio_sends_total{{{SEL}}}[{RATE}]))",
                    "{{status}} {{error_code}}",
                ),
                stacked=True,
                width=8,
            )
        )
        .with_row(Row("Queues"))
        .with_panel(
            graph(
                "Inbox depth",
                "short",
                "Accepted messages the agent has not finished, per colour (each colour has its own inbox).",
                q(per_shard_total("wacoder_agent_inbox_depth", SEL), "{{colour}}"),
                width=6,
            )
        )
        .with_panel(
            graph(
                "Inbox oldest entry age",
                "s",
                "Age of the oldest message not yet handled: how late the agent is.",
                q(f"max by (colour) (wacoder_agent_inbox_oldest_age_seconds{{{SEL}}})", "{{colour}}"),
                width=6,
            )
        )
        .with_panel(
            graph(
                "Outbox depth",
                "short",
                "Replies waiting to be sent to Twilio, per colour.",
                q(per_shard_total("wacoder_notifier_outbox_depth", SEL), "{{colour}}"),
                width=6,
            )
        )
        .with_panel(
            graph(
                "Outbox oldest entry age",
                "s",
                "Age of the oldest reply not yet sent: how late the notifier is.",
                q(f"max by (colour) (wacoder_notifier_outbox_oldest_age_seconds{{{SEL}}})", "{{colour}}"),
                width=6,
            )
        )
        .with_row(Row("Delivery"))
        .with_panel(
            bars(
                "Delivery funnel over the time range",
                "short",
                "Replies queued (one per reply), Twilio sends accepted (one per part of 1,600 "
                "characters), then the statuses Twilio reported back: sent, delivered, read, and the "
                "failures (failed, undelivered).",
                q(f"sum(increase(wacoder_notifier_queued_total{{{SEL}}}[$__range]))", "queued"),
                q(
                    "sum("
                    f'increase(wacoder_notifier_twilio_sends_total{{{SEL}, status="accepted"}}[$__range]))',
                    "accepted by Twilio",
                ),
                q(
                    f"sum by (status) (increase(wacoder_webhook_status_callbacks_total"
                    f'{{{SEL}, status=~"sent|delivered|read|failed|undelivered"}}[$__range]))',
                    "{{status}}",
                ),
            )
        )
        .with_panel(
            graph(
                "Dead letters and parked replies",
                "cps",
                "Replies given up on (by reason), and replies parked because the user's 24-hour "
                "WhatsApp window is closed (sent when they write again).",
                q(
                    f"sum by (reason) (rate(wacoder_notifier_dead_letters_total{{{SEL}}}[{RATE}]))",
                    "dead letter: {{reason}}",
                ),
                q(f"sum(rate(wacoder_notifier_parked_total{{{SEL}}}[{RATE}]))", "parked"),
            )
        )
        .with_row(Row("Refusals and duplicates"))
        .with_panel(
            graph(
                "Refusals by reason",
                "reqps",
                "Messages the webhook refused: not whitelisted, over a rate limit, a bad signature "
                "(not Twilio, or PUBLIC_BASE_URL wrong), a malformed form.",
                q(
                    f"sum by (outcome) (rate(wacoder_webhook_messages_total"
                    f'{{{SEL}, outcome=~"unauthorized|rate_limited|bad_signature|bad_request"}}[{RATE}]))',
                    "{{outcome}}",
                ),
                q(
                    f"sum by (reason) (rate(wacoder_webhook_refusal_notices_total{{{SEL}}}[{RATE}]))",
                    "user told: {{reason}}",
                ),
            )
        )
        .with_panel(
            graph(
                "Duplicates dropped",
                "cps",
                "Twilio retries of a message already accepted (webhook), and repeated send requests "
                "of a reply already queued (notifier idempotency keys).",
                q(
                    f'sum(rate(wacoder_webhook_messages_total{{{SEL}, outcome="duplicate"}}[{RATE}]))',
                    "inbound (webhook)",
                ),
                q(
                    f"sum(rate(wacoder_notifier_duplicates_dropped_total{{{SEL}}}[{RATE}]))",
                    "outbound (notifier)",
                ),
            )
        )
        .with_row(Row("gRPC between the services"))
        .with_panel(
            graph(
                "gRPC calls handled, by method and code",
                "cps",
                "Calls each server completed.",
                q(
                    f"sum by (method, code) (rate(wacoder_grpc_server_handled_total{{{SEL}}}[{RATE}]))",
                    "{{method}} {{code}}",
                ),
            )
        )
        .with_panel(
            graph(
                "gRPC server latency p99, by method",
                "s",
                "Time each server took per call (WatchSession streams last as long as a session).",
                *quantiles("wacoder_grpc_server_handling_seconds", SEL, by="method", levels=(0.99,)),
            )
        )
    )


def autocoder() -> Dashboard:
    return (
        base(
            "wacoder-autocoder",
            "WhatsApp-Coder / AutoCoder",
            "Coding sessions and their agents, the MCP tools behind them, the circuit breaker and caches.",
        )
        .with_row(Row("Sessions"))
        .with_panel(
            single(
                "Sessions running",
                "short",
                "Coding sessions AutoCoder is running now (the reference AutoCoder's own count).",
                q(f"sum(autocoder_sessions_running{{{SEL}}})", "running"),
                width=4,
            )
        )
        .with_panel(
            graph(
                "Sessions started and finished",
                "cps",
                "Started by the agent; finished at AutoCoder, by outcome.",
                q(f"sum(rate(wacoder_agent_sessions_started_total{{{SEL}}}[{RATE}]))", "started"),
                q(
                    f"sum by (status) (rate(autocoder_sessions_finished_total{{{SEL}}}[{RATE}]))",
                    "finished: {{status}}",
                ),
                width=10,
            )
        )
        .with_panel(
            bars(
                "Session outcomes over the time range",
                "percentunit",
                "Share of the sessions that finished in the time range, by outcome.",
                q(
                    f"sum by (status) (increase(autocoder_sessions_finished_total{{{SEL}}}[$__range]))"
                    f" / ignoring (status) group_left"
                    f" sum(increase(autocoder_sessions_finished_total{{{SEL}}}[$__range]))",
                    "{{status}}",
                ),
                width=10,
            )
        )
        .with_panel(
            graph(
                "Session duration",
                "s",
                "From start to end, by outcome (AutoCoder's view).",
                *quantiles("autocoder_session_seconds", SEL, by="status", levels=(0.5, 0.9)),
            )
        )
        .with_panel(
            graph(
                "Sessions relayed to users, and progress messages",
                "cps",
                "Sessions whose end the agent told the user, by outcome, and the progress messages "
                "it sent (update batches, final summaries).",
                q(
                    f"sum by (outcome) (rate(wacoder_agent_sessions_completed_total{{{SEL}}}[{RATE}]))",
                    "relayed: {{outcome}}",
                ),
                q(
                    f"sum by (kind) (rate(wacoder_agent_progress_messages_total{{{SEL}}}[{RATE}]))",
                    "progress: {{kind}}",
                ),
            )
        )
        .with_row(Row("Agents"))
        .with_panel(
            graph(
                "Agent runs by agent and outcome",
                "cps",
                "Runs of each AutoCoder agent (planner, developer, tester, ...): done or failed (an "
                "error, or the tester's tests did not pass).",
                q(
                    f"sum by (agent, status) (rate(autocoder_agent_runs_total{{{SEL}}}[{RATE}]))",
                    "{{agent}} {{status}}",
                ),
                stacked=True,
                width=8,
            )
        )
        .with_panel(
            graph(
                "Agent failure ratio",
                "percentunit",
                "Share of each agent's runs that did not end done.",
                q(
                    f'1 - sum by (agent) (rate(autocoder_agent_runs_total{{{SEL}, status="done"}}[{RATE}]))'
                    f" / sum by (agent) (rate(autocoder_agent_runs_total{{{SEL}}}[{RATE}]))",
                    "{{agent}}",
                ),
                width=8,
            )
        )
        .with_panel(
            graph(
                "Agent run duration p95",
                "s",
                "Time one agent took within a session (the tester's includes the sandboxed test run).",
                *quantiles("autocoder_agent_run_seconds", SEL, by="agent", levels=(0.95,)),
                width=8,
            )
        )
        .with_row(Row("MCP bridge"))
        .with_panel(
            graph(
                "Tool latency p50 / p95, by tool",
                "s",
                "Time of one AutoCoder tool call through the bridge, retries included.",
                *quantiles("wacoder_bridge_tool_seconds", SEL, by="tool", levels=(0.5, 0.95)),
                width=8,
            )
        )
        .with_panel(
            graph(
                "Tool calls by tool and outcome",
                "cps",
                "ok, tool_error (AutoCoder refused: e.g. an unknown session), unavailable, timeout.",
                q(
                    f"sum by (tool, outcome) (rate(wacoder_bridge_tool_seconds_count{{{SEL}}}[{RATE}]))",
                    "{{tool}} {{outcome}}",
                ),
                stacked=True,
                width=8,
            )
        )
        .with_panel(
            single(
                "Circuit breaker towards AutoCoder",
                "none",
                "Per bridge pod: closed (calls go through), half-open (one trial call), open (calls "
                "fail fast: AutoCoder is failing or unreachable).",
                q(f"max by (colour, pod) (wacoder_bridge_breaker_state{{{SEL}}})", "{{colour}} {{pod}}"),
                width=8,
                warn=1,
                bad=2,
                mappings={"0": ("closed", "green"), "1": ("half-open", "orange"), "2": ("open", "red")},
            )
        )
        .with_panel(
            graph(
                "Cache hit ratio, by tool",
                "percentunit",
                "Share of cacheable calls (projects 5 min, files 10 min, health 1 min) answered from Redis.",
                q(
                    f'sum by (tool) (rate(wacoder_bridge_cache_total{{{SEL}, result="hit"}}[{RATE}]))'
                    f" / sum by (tool) (rate(wacoder_bridge_cache_total{{{SEL}}}[{RATE}]))",
                    "{{tool}}",
                ),
            )
        )
        .with_panel(
            graph(
                "Cache lookups, by tool and result",
                "cps",
                "Cacheable calls, hit or miss.",
                q(
                    f"sum by (tool, result) (rate(wacoder_bridge_cache_total{{{SEL}}}[{RATE}]))",
                    "{{tool}} {{result}}",
                ),
                stacked=True,
            )
        )
    )


def rollout() -> Dashboard:
    return (
        base(
            "wacoder-rollout",
            "WhatsApp-Coder / Rollout",
            "Blue and green side by side: traffic, errors and latency per colour during a rollout.",
            with_colour=False,
        )
        .with_row(Row("Traffic per colour"))
        .with_panel(
            graph(
                "Messages accepted, per colour",
                "reqps",
                "Where the live traffic goes: the active Service's colour accepts it.",
                q(
                    "sum by (colour) "
                    f'(rate(wacoder_webhook_messages_total{{{BOT}, outcome="accepted"}}[{RATE}]))',
                    "{{colour}}",
                ),
            )
        )
        .with_panel(
            graph(
                "Messages answered, per colour",
                "cps",
                "Replies handed to the notifier by each colour's agents.",
                q(
                    f"sum by (colour) (rate(wacoder_agent_messages_processed_total{{{BOT}}}[{RATE}]))",
                    "{{colour}}",
                ),
            )
        )
        .with_panel(
            single(
                "Pods up, per colour and service",
                "short",
                "Scrape targets answering.",
                q(
                    f'sum by (colour, component) (up{{{BOT}, component=~"{COMPONENTS}"}})',
                    "{{colour}} {{component}}",
                ),
                width=24,
            )
        )
        .with_row(Row("Errors per colour"))
        .with_panel(
            graph(
                "Error answers per message, per colour",
                "percentunit",
                "Messages answered with an error, as a share of messages answered.",
                q(
                    f"sum by (colour) (rate(wacoder_agent_errors_total{{{BOT}}}[{RATE}]))"
                    f" / sum by (colour) (rate(wacoder_agent_messages_processed_total{{{BOT}}}[{RATE}]))",
                    "{{colour}}",
                ),
                width=8,
            )
        )
        .with_panel(
            graph(
                "gRPC calls not OK, per colour",
                "percentunit",
                "Share of the colour's gRPC calls (callers' view) that did not end OK.",
                q(
                    "1 - sum by (colour) "
                    f'(rate(wacoder_grpc_client_handled_total{{{BOT}, code="OK"}}[{RATE}]))'
                    f" / sum by (colour) (rate(wacoder_grpc_client_handled_total{{{BOT}}}[{RATE}]))",
                    "{{colour}}",
                ),
                width=8,
            )
        )
        .with_panel(
            graph(
                "Twilio sends not accepted, per colour",
                "percentunit",
                "Share of the colour's Twilio requests that Twilio refused or did not answer.",
                q(
                    f"1 - sum by (colour) (rate(wacoder_notifier_twilio_sends_total"
                    f'{{{BOT}, status="accepted"}}[{RATE}]))'
                    f" / sum by (colour) (rate(wacoder_notifier_twilio_sends_total{{{BOT}}}[{RATE}]))",
                    "{{colour}}",
                ),
                width=8,
            )
        )
        .with_row(Row("Latency per colour"))
        .with_panel(
            graph(
                "Webhook ack p99, per colour",
                "s",
                "Time to answer Twilio (15 s is its timeout).",
                *quantiles("wacoder_webhook_latency_seconds", BOT, by="colour", levels=(0.99,)),
                width=8,
            )
        )
        .with_panel(
            graph(
                "End to end p95, per colour",
                "s",
                "From the webhook accepting a message to Twilio accepting its reply.",
                *quantiles("wacoder_notifier_end_to_end_seconds", BOT, by="colour", levels=(0.95,)),
                width=8,
            )
        )
        .with_panel(
            graph(
                "Tool latency p95, per colour",
                "s",
                "AutoCoder tool calls through each colour's bridge.",
                *quantiles("wacoder_bridge_tool_seconds", BOT, by="colour", levels=(0.95,)),
                width=8,
            )
        )
        .with_row(Row("Draining"))
        .with_panel(
            graph(
                "Inbox and outbox depth, per colour",
                "short",
                "Each colour has its own queues: the colour being retired must drain to zero before "
                "it is scaled down.",
                q(per_shard_total("wacoder_agent_inbox_depth", BOT), "inbox {{colour}}"),
                q(per_shard_total("wacoder_notifier_outbox_depth", BOT), "outbox {{colour}}"),
            )
        )
        .with_panel(
            graph(
                "Oldest queued entry age, per colour",
                "s",
                "How late each colour's agent and notifier are.",
                q(f"max by (colour) (wacoder_agent_inbox_oldest_age_seconds{{{BOT}}})", "inbox {{colour}}"),
                q(
                    f"max by (colour) (wacoder_notifier_outbox_oldest_age_seconds{{{BOT}}})",
                    "outbox {{colour}}",
                ),
            )
        )
    )


DASHBOARDS = {"overview.json": overview, "autocoder.json": autocoder, "rollout.json": rollout}


def render() -> dict[str, str]:
    """File name → the JSON this generator produces (stable: sorted keys, two-space indent)."""
    encoder = JSONEncoder(sort_keys=True, indent=2)
    return {name: encoder.encode(build().build()) + "\n" for name, build in DASHBOARDS.items()}


def main() -> None:
    for name, text in render().items():
        (HERE / name).write_text(text)
        print(f"wrote {HERE / name}", file=sys.stderr)


if __name__ == "__main__":
    main()
