"""The alerts (charts/whatsapp-coder/alerts, issue 13): `promtool check rules` accepts the rules
file, `promtool test rules` runs the unit tests in which each alert fires when it should and
stays quiet otherwise, every alert is tested both ways, carries a severity, a summary, a
description and a runbook_url that leads to its section of docs/runbooks.md, and the chart
embeds the very same rules in a PrometheusRule. Whether the series the alerts name exist is
tests/test_prometheus.py's part, against a real Prometheus scraping the platform."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.test_chart import CHART, HELM, REPO, of_kind, production_objects, render

RULES = CHART / "alerts" / "rules.yaml"
TESTS = CHART / "alerts" / "tests.yaml"
RUNBOOKS = REPO / "docs" / "runbooks.md"
RUNBOOK_URL = "https://github.com/whatsapp-coder/whatsapp-coder/blob/main/docs/runbooks.md"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian's `prometheus` package; .ci/run installs it)"
)


def alerts(groups: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    groups = groups or yaml.safe_load(RULES.read_text())
    return [rule for group in groups["groups"] for rule in group["rules"] if "alert" in rule]


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    checked = promtool("check", "rules", str(RULES), cwd=REPO)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in checked.stdout


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    tested = promtool("test", "rules", TESTS.name, cwd=TESTS.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


@needs_promtool
def test_the_unit_tests_catch_a_wrong_threshold(tmp_path: Path) -> None:
    """They can fail: the same tests against rules whose thresholds moved do not pass."""
    moved = RULES.read_text().replace("> 0.1\n", "> 0.9\n").replace("> 120\n", "> 1200\n")
    assert moved != RULES.read_text()
    (tmp_path / "rules.yaml").write_text(moved)
    shutil.copy(TESTS, tmp_path / "tests.yaml")
    tested = promtool("test", "rules", "tests.yaml", cwd=tmp_path)
    assert tested.returncode != 0
    for name in ("WacoderErrorAnswers", "WacoderTwilioSendFailures", "WacoderInboxStale"):
        assert f"alertname: {name}" in tested.stdout + tested.stderr, name


def test_every_alert_is_tested_firing_and_quiet() -> None:
    cases: dict[str, dict[str, int]] = {}
    for test in yaml.safe_load(TESTS.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            outcome = "firing" if case.get("exp_alerts") else "quiet"
            counts = cases.setdefault(case["alertname"], {"firing": 0, "quiet": 0})
            counts[outcome] += 1
    for rule in alerts():
        counted = cases.get(rule["alert"], {})
        assert counted.get("firing") and counted.get("quiet"), f"{rule['alert']}: {counted or 'not tested'}"
    assert set(cases) == {rule["alert"] for rule in alerts()}, "a test names an alert that does not exist"


def runbook_anchors() -> dict[str, str]:
    """GitHub's anchors of the runbook's `## ` headings → the section's text."""
    sections = re.split(r"^## ", RUNBOOKS.read_text(), flags=re.M)[1:]
    found = {}
    for section in sections:
        heading, _, body = section.partition("\n")
        anchor = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found[anchor] = body
    return found


def test_every_alert_has_severity_summary_description_and_a_runbook_section() -> None:
    sections = runbook_anchors()
    for rule in alerts():
        name = rule["alert"]
        assert re.fullmatch(r"Wacoder[A-Za-z]+", name), name
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url"}, name
        assert annotations["summary"].strip() and annotations["description"].strip(), name
        url, _, anchor = annotations["runbook_url"].partition("#")
        assert url == RUNBOOK_URL and anchor == name.lower(), f"{name}: {annotations['runbook_url']}"
        assert anchor in sections, f"{name}: no section `## {name}` in docs/runbooks.md"
        for part in ("**What it means.**", "**How to check.**", "**What to do.**"):
            assert part in sections[anchor], f"{name}: its runbook has no {part}"
    # And no runbook for an alert that is gone.
    assert set(sections) == {rule["alert"].lower() for rule in alerts()}


@pytest.mark.skipif(HELM is None, reason="no helm binary (see tests/deploy/test_chart.py)")
def test_the_chart_embeds_the_rules_in_a_prometheus_rule() -> None:
    assert not of_kind(render(), "PrometheusRule")  # off by default
    [rule] = of_kind(render(sets=["prometheusRule.enabled=true", "colour=green"]), "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["name"] == "wab-whatsapp-coder-green-alerts"
    assert rule["metadata"]["labels"]["colour"] == "green"
    assert set(rule["spec"]) == {"groups"}
    assert rule["spec"] == yaml.safe_load(RULES.read_text())  # the very rules promtool tested
    # Production: selected by the Prometheus, runbooks where that team publishes them.
    [production] = of_kind(production_objects(), "PrometheusRule")
    assert production["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    urls = [a["annotations"]["runbook_url"] for a in alerts(production["spec"])]
    assert len(urls) == len(alerts())
    assert all(
        re.fullmatch(r"https://wiki\.acme\.example\.org/whatsapp-coder/runbooks#wacoder\w+", u) for u in urls
    )
