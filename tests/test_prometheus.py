"""The dashboards and alerts against a real Prometheus (issue 13).

A Prometheus from Debian's package (/usr/bin/prometheus, or PROMETHEUS_BIN) scrapes the running
platform every second, each target labelled as the chart's ServiceMonitors label it (namespace,
job/service, pod, endpoint, and the pods' colour, component and bot), and loads the alert rules
(charts/whatsapp-coder/alerts/rules.yaml) as they ship. A scripted conversation exercises what
the panels show: commands, a coding session run to its end, cached and uncached tool calls, an
error answer, a Twilio retry (duplicate), a stranger and a forged request (refusals), a reply
Twilio refuses for good (a dead letter), and delivery callbacks up to read and failed.

Then, through Prometheus' HTTP API: every query of every dashboard panel returns data (Grafana's
variables substituted), the dashboards' variables offer this bot, Prometheus evaluates every
alert rule without error, and every series an alert names exists (an alert that is quiet must
still be looking at something real). A query naming a metric nobody exports fails.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from devtools.stack import Stack, free_port

from tests.harness import (
    BOT_NUMBER,
    Conversation,
    RedisServer,
    TwilioSim,
    inbound,
    post_signed,
    wait_for_port,
)

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "whatsapp-coder"
RULES = CHART / "alerts" / "rules.yaml"
DASHBOARDS = {name: CHART / "dashboards" / f"{name}.json" for name in ("overview", "autocoder", "rollout")}
PROMETHEUS = os.environ.get("PROMETHEUS_BIN") or shutil.which("prometheus") or "/usr/bin/prometheus"

pytestmark = pytest.mark.skipif(
    not Path(PROMETHEUS).exists(),
    reason="no prometheus server (Debian's `prometheus` package; .ci/run installs it)",
)

# What the ServiceMonitors' relabelings and the Prometheus Operator put on every target.
NAMESPACE, BOT, COLOUR = "e2e", "e2e", "blue"
PORT_VARIABLE = {
    "agent": "AGENT_METRICS_PORT",
    "mcp-bridge": "MCP_BRIDGE_METRICS_PORT",
    "notifier": "NOTIFIER_METRICS_PORT",
    "autocoder": "AUTOCODER_METRICS_PORT",
}
# Numbers of this module only (+1555893...): the whitelist lets the first two in.
USER, SECOND_USER, STRANGER = "+15558930001", "+15558930002", "+15558930009"

# Grafana's variables, as a dashboard showing this bot over the whole test would fill them in:
# a window that spans the conversation (it takes well under 5 minutes).
VARIABLES = {
    "$__rate_interval": "5m",
    "$__range": "5m",
    "$namespace": NAMESPACE,
    "$bot": BOT,
    "$colour": COLOUR,
}

# Selectors of alerts that only match during the incident they watch for (a server-side gRPC
# code, a 503, a tool timing out, a failed session): the conversation cannot cause them without
# breaking the platform. Their metric and the labels they match on must exist all the same.
INCIDENT_ONLY = {
    'wacoder_webhook_messages_total{outcome="unavailable"}',
    'wacoder_grpc_client_handled_total{code=~"UNAVAILABLE|DEADLINE_EXCEEDED|INTERNAL|UNKNOWN|DATA_LOSS'
    '|UNIMPLEMENTED|RESOURCE_EXHAUSTED"}',
    'wacoder_bridge_tool_seconds_count{outcome=~"unavailable|timeout"}',
    'autocoder_sessions_finished_total{status="failed"}',
}
TOPOLOGY = ("namespace", "bot", "colour", "component")


# --- Prometheus ------------------------------------------------------------------------------


class Prometheus:
    """A Prometheus server of the test's own, on a free port, with its storage in a temp dir."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = Path(tempfile.mkdtemp(prefix="wacoder-prometheus-"))
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(scrape_config(env)))
        self.log = (self.dir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={self.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, timeout_s=30)
        deadline = time.monotonic() + 30
        while httpx.get(f"{self.url}/-/ready").status_code != 200:
            assert time.monotonic() < deadline, (self.dir / "prometheus.log").read_text()
            time.sleep(0.1)

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10).json()
        assert answer["status"] == "success", (expr, answer)
        return list(answer["data"]["result"])

    def api(self, path: str, **params: Any) -> Any:
        answer = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10).json()
        assert answer["status"] == "success", (path, answer)
        return answer["data"]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def scrape_config(env: dict[str, str]) -> dict[str, Any]:
    """One job per service, its target labelled as the ServiceMonitor would label it (job is
    the Service's name; colour, component and bot come from the pod's labels)."""
    jobs = []
    for component in ("webhook", "agent", "mcp-bridge", "notifier", "autocoder"):
        if component == "webhook":
            port, endpoint = env["WEBHOOK_PORT"], "http"
        else:
            port, endpoint = env[PORT_VARIABLE[component]], "metrics"
        service = f"{BOT}-{COLOUR}-{component}"
        labels = {
            "namespace": NAMESPACE,
            "service": service,
            "endpoint": endpoint,
            "pod": f"{service}-0",
            "container": component,
            "colour": COLOUR,
            "component": component,
            "bot": BOT,
        }
        jobs.append(
            {
                "job_name": service,
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [f"127.0.0.1:{port}"], "labels": labels}],
            }
        )
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": jobs,
    }


# --- PromQL, just enough of it -----------------------------------------------------------------


def substitute(expr: str) -> str:
    for variable, value in VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a Grafana variable left unsubstituted: {expr}"
    return expr


_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool"}
_SELECTOR = re.compile(r"(?P<name>[A-Za-z_:][\w:]*)\s*(?P<matchers>\{[^}]*\})?(?P<call>\s*\()?")


def vector_selectors(expr: str) -> list[tuple[str, str]]:
    """(metric, `{matchers}` or "") of every vector selector in `expr`: what is left once
    grouping label lists, range durations, function and aggregation calls are taken out."""
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    found = []
    for match in _SELECTOR.finditer(expr):
        if match.group("call") or match.group("name") in _KEYWORDS:
            continue
        found.append((match.group("name"), match.group("matchers") or ""))
    return found


def matchers(text: str) -> list[tuple[str, str, str]]:
    return re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', text)


def _top_level(expr: str) -> Iterator[tuple[int, str]]:
    """(index, character) of `expr` outside parentheses, braces, brackets and strings."""
    depth, quoted = 0, False
    for index, char in enumerate(expr):
        if char == '"':
            quoted = not quoted
        elif not quoted and char in "([{":
            depth += 1
        elif not quoted and char in ")]}":
            depth -= 1
        elif not quoted and depth == 0:
            yield index, char


def _wrapped(part: str) -> bool:
    """Whether `part` is one parenthesised whole: `(a > 1)`, not `(a) / (b)`."""
    depth, quoted = 0, False
    for index, char in enumerate(part):
        if char == '"':
            quoted = not quoted
        elif not quoted and char in "([{":
            depth += 1
        elif not quoted and char in ")]}":
            depth -= 1
            if depth == 0:
                return part.startswith("(") and index == len(part) - 1
    return False


def without_comparison(expr: str) -> list[str]:
    """The operands an alert compares: `a > 0.1 and b >= 4` → [a, b]; `(a > 1)` → [a]."""
    expr = " ".join(expr.split())
    cuts = [i for i, _ in _top_level(expr) if expr.startswith(" and ", i)]
    starts, ends = [0, *[cut + len(" and ") for cut in cuts]], [*cuts, len(expr)]
    operands = []
    for start, end in zip(starts, ends, strict=True):
        part = expr[start:end].strip()
        while _wrapped(part):
            part = part[1:-1].strip()
        operators = [i for i, c in _top_level(part) if c in "<>=!" and part[i : i + 2] not in ("=~", "!~")]
        operands.append(part[: operators[0]].strip() if operators else part)
    return operands


# --- the platform, scraped, during a conversation ---------------------------------------------


@pytest.fixture(scope="module")
def twilio_sim() -> Iterator[TwilioSim]:
    sim = TwilioSim(status_callbacks=True)  # sent, delivered for every message, as Twilio does
    yield sim
    sim.stop()


@pytest.fixture(scope="module")
def module_redis(own_redis: RedisServer) -> RedisServer:
    return own_redis  # queue depths are counted over the whole Redis: only this module's


@pytest.fixture(scope="module")
def stack_overrides() -> dict[str, str]:
    return {"ALLOWED_PHONE_NUMBERS": f"{USER},{SECOND_USER}"}


@pytest.fixture(scope="module")
def prometheus(stack: Stack, env: dict[str, str]) -> Iterator[Prometheus]:
    server = Prometheus(env)
    yield server
    server.stop()


SESSION_ID = re.compile(r"Started session `([^`]+)`")


@pytest.fixture(scope="module")
def conversation(prometheus: Prometheus, env: dict[str, str], twilio_sim: TwilioSim) -> Prometheus:
    # Every target scraped once before anything happens: its series' zeros are the baseline
    # that rate() and increase() measure the conversation from, as on a platform running a while.
    wait_until(prometheus, f"count(up == 1) == {len(scrape_config(env)['scrape_configs'])}")
    user = Conversation(env, twilio_sim, USER)
    assert "/new" in user.ask("/help")
    assert "shop" in user.ask("/new shop")
    started = user.ask("build a REST API with auth")
    session = SESSION_ID.search(started)
    assert session, started
    user.wait_progress(rf"Session `{session.group(1)}` in \*shop\*: \*(succeeded|failed)\*", timeout_s=90)
    # One session is enough for rate() and increase() to see its outcome: the services expose
    # their known label values at 0 from the start (wacoder.metrics.from_zero).
    user.ask("/list")
    user.ask("/list")  # answered from the bridge's projects cache
    user.ask(f"/files {session.group(1)}")  # the summary fetched them: a hit too
    assert "not found" in user.ask("/status no-such-session")  # an error answer (tool_error)
    # A Twilio retry of a message already accepted: a duplicate, not answered twice.
    sid = user.send("/agents")
    user.next()
    assert post_signed(env, "/webhook/whatsapp", inbound(USER, "/agents", sid)).status_code == 200
    # Refusals: a number off the whitelist (told once), and a request Twilio did not sign.
    Conversation(env, twilio_sim, STRANGER).send("/help")
    forged = httpx.post(env["PUBLIC_BASE_URL"] + "/webhook/whatsapp", data=inbound(USER, "hi", "SMforged"))
    assert forged.status_code == 403
    # A reply Twilio refuses for good (21211: not a valid number): a dead letter.
    twilio_sim.script([{"status": 400, "code": 21211, "message": "Invalid 'To' Phone Number"}])
    Conversation(env, twilio_sim, SECOND_USER).send("/help")
    wait_until(prometheus, "sum(wacoder_notifier_dead_letters_total) >= 1")
    # Delivery callbacks beyond Twilio's sent and delivered: one reply read, one failed.
    [first, *_] = twilio_sim.messages(f"whatsapp:{USER}")
    for status, message_sid in (("read", first["sid"]), ("failed", "SM" + "f" * 32)):
        form = {
            "MessageSid": message_sid,
            "MessageStatus": status,
            "To": f"whatsapp:{USER}",
            "From": BOT_NUMBER,
        }
        assert post_signed(env, "/webhook/status", form).status_code == 204
    wait_until(prometheus, 'sum(wacoder_webhook_status_callbacks_total{status="failed"}) >= 1')
    time.sleep(3)  # a few more scrapes: every counter moved has two samples to take a rate of
    return prometheus


def wait_until(prometheus: Prometheus, expr: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not prometheus.query(expr):
        assert time.monotonic() < deadline, f"{expr} never held"
        time.sleep(0.5)


def has_data(result: list[dict[str, Any]]) -> bool:
    """At least one series with a number (a quantile over no observations is NaN)."""
    return any(not math.isnan(float(series["value"][1])) for series in result)


# --- the dashboards ---------------------------------------------------------------------------


def panel_queries() -> list[tuple[str, str, str]]:
    found = []
    for name, path in DASHBOARDS.items():
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                found.append((name, panel["title"], target["expr"]))
    return found


@pytest.mark.parametrize(
    ("dashboard", "title", "expr"), panel_queries(), ids=[f"{d}: {t}" for d, t, _ in panel_queries()]
)
def test_every_panel_query_returns_data(
    conversation: Prometheus, dashboard: str, title: str, expr: str
) -> None:
    result = conversation.query(substitute(expr))
    assert has_data(result), f"{dashboard} / {title}: no data for {substitute(expr)}\n{result}"


def test_the_dashboards_variables_offer_this_bot(conversation: Prometheus) -> None:
    for name, path in DASHBOARDS.items():
        for variable in json.loads(path.read_text())["templating"]["list"]:
            if variable["type"] != "query":
                continue
            match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"])
            assert match, (name, variable["query"])
            values = conversation.api(
                f"label/{match.group(2)}/values", **{"match[]": substitute(match.group(1))}
            )
            expected = {"namespace": NAMESPACE, "bot": BOT, "colour": COLOUR}[variable["name"]]
            assert values == [expected], (name, variable["name"], values)


def test_a_query_naming_a_metric_nobody_exports_has_no_data(conversation: Prometheus) -> None:
    """The checks above can fail: a misspelt metric returns nothing."""
    expr = 'sum by (outcome) (rate(wacoder_webhook_message_total{namespace="$namespace"}[$__rate_interval]))'
    assert not has_data(conversation.query(substitute(expr)))


# --- the alerts -------------------------------------------------------------------------------


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_prometheus_evaluates_every_rule_without_error(conversation: Prometheus) -> None:
    deadline = time.monotonic() + 10
    while True:
        rules = [r for g in conversation.api("rules")["groups"] for r in g["rules"]]
        if all(r.get("lastEvaluation", "").startswith("2") and r["health"] != "unknown" for r in rules):
            break
        assert time.monotonic() < deadline, rules
        time.sleep(0.5)
    assert len(rules) == len(alert_rules())
    bad = [(r["name"], r["health"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not bad
    # Nothing is wrong with the platform: nothing fires but the alerts whose condition the
    # conversation caused on purpose (a dead letter).
    firing = {
        a["labels"]["alertname"] for a in conversation.api("alerts")["alerts"] if a["state"] == "firing"
    }
    assert firing <= {"WacoderDeadLetters"}, firing


@pytest.mark.parametrize(
    "rule", alert_rules(), ids=lambda rule: f"{rule['alert']}-{rule['labels']['severity']}"
)
def test_every_series_an_alert_names_exists(conversation: Prometheus, rule: dict[str, Any]) -> None:
    expr = rule["expr"]
    selectors = vector_selectors(expr)
    assert selectors, expr
    for metric, text in selectors:
        where = f"{rule['alert']}: {metric}{text}"
        # The metric is exported by this bot, with every label the alert matches on.
        assert has_data(conversation.query(f'{metric}{{namespace="{NAMESPACE}", bot="{BOT}"}}')), (
            f"{where}: nobody exports {metric}"
        )
        for label, _, _ in matchers(text):
            assert conversation.query(f'{metric}{{{label}!=""}}'), f"{where}: no series has a {label} label"
        # And the series as selected, unless only an incident produces them.
        if f"{metric}{text}" not in INCIDENT_ONLY:
            assert has_data(conversation.query(f"{metric}{text}")), f"{where}: no such series"
    # What the alert compares, computed (a grouping that matches nothing on both sides of a
    # division would leave it empty and the alert blind): absent() is empty while all is well.
    if "absent(" in expr or any(f"{m}{t}" in INCIDENT_ONLY for m, t in selectors):
        return
    for operand in without_comparison(expr):
        assert has_data(conversation.query(operand)), f"{rule['alert']}: no data for {operand}"


def test_the_promql_helpers() -> None:
    assert vector_selectors(
        'sum by (a, le) (rate(x_bucket{le="2.5", b=~"c|d"}[5m])) / ignoring (s) group_left sum(y) > 0.1'
    ) == [("x_bucket", '{le="2.5", b=~"c|d"}'), ("y", "")]
    assert without_comparison("(a / b > 0.5) and sum by (x) (c) >= 4") == ["a / b", "sum by (x) (c)"]
    assert without_comparison('max(z{q="1"}) == 2') == ['max(z{q="1"})']
