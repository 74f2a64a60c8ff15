"""The Grafana dashboards (charts/whatsapp-coder/dashboards, issue 13): the committed JSON is what
the generator produces (`make dashboards` after editing generate.py), every panel has a query
and a unit, every query filters on the bot the dashboard shows, and the chart ships each
dashboard as a ConfigMap for Grafana's sidecar. Whether the queries return data is
tests/test_prometheus.py's part, against a real Prometheus."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.deploy.test_chart import CHART, HELM, of_kind, production_objects, render

DASHBOARDS = CHART / "dashboards"
NAMES = ("overview", "autocoder", "rollout")


def generator() -> ModuleType:
    """charts/whatsapp-coder/dashboards/generate.py, imported from its path (not a package)."""
    spec = importlib.util.spec_from_file_location("wacoder_dashboards", DASHBOARDS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def committed() -> dict[str, dict[str, Any]]:
    return {name: json.loads((DASHBOARDS / f"{name}.json").read_text()) for name in NAMES}


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel but the rows (which only group), nested ones included."""
    found = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            found += panel.get("panels", [])
        else:
            found.append(panel)
    return found


def test_the_committed_json_is_what_the_generator_produces() -> None:
    produced = generator().render()
    assert set(produced) == {f"{name}.json" for name in NAMES}
    stale = [name for name, text in produced.items() if (DASHBOARDS / name).read_text() != text]
    assert not stale, f"{stale} differ from dashboards/generate.py's output: run `make dashboards`"


def test_the_drift_check_sees_an_edit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above can fail: a JSON file edited by hand is caught."""
    original = Path.read_text

    def edited(path: Path, *args: Any, **kwargs: Any) -> str:
        text = original(path, *args, **kwargs)
        return text.replace("p99", "p98", 1) if path.name == "overview.json" else text

    monkeypatch.setattr(Path, "read_text", edited)
    with pytest.raises(AssertionError, match=r"overview\.json"):
        test_the_committed_json_is_what_the_generator_produces()


def test_every_panel_has_a_query_a_unit_and_the_dashboards_datasource() -> None:
    for name, dashboard in committed().items():
        found = panels(dashboard)
        assert len(found) >= 10, name
        titles = [p["title"] for p in found]
        assert len(titles) == len(set(titles)), f"{name}: two panels share a title"
        for panel in found:
            where = f"{name}: {panel['title']}"
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
            assert panel["fieldConfig"]["defaults"].get("unit"), f"{where} has no unit"
            assert panel.get("description"), f"{where} has no description"
            assert panel["targets"], f"{where} has no query"
            for target in panel["targets"]:
                assert target["expr"].strip(), where
                assert target.get("legendFormat"), where


def test_every_query_is_scoped_to_the_chosen_bot() -> None:
    """A query without the namespace and bot filters would add up every bot Prometheus scrapes;
    the Overview and AutoCoder dashboards also honour the colour picker."""
    for name, dashboard in committed().items():
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        assert {"namespace", "bot"} <= set(variables)
        assert ("colour" in variables) == (name != "rollout")
        for panel in panels(dashboard):
            for target in panel["targets"]:
                selectors = re.findall(r"\b[a-z_:]+\{[^}]*\}", target["expr"])
                assert selectors, (name, target["expr"])
                for selector in selectors:
                    assert 'namespace="$namespace", bot="$bot"' in selector, (name, selector)
                    if name != "rollout":
                        assert 'colour=~"$colour"' in selector, (name, selector)


def test_the_rollout_dashboard_compares_the_colours() -> None:
    rollout = committed()["rollout"]
    for panel in panels(rollout):
        for target in panel["targets"]:
            assert re.search(r"by \([^)]*\bcolour\b", target["expr"]), (panel["title"], target["expr"])
            assert "{{colour}}" in target["legendFormat"], panel["title"]


@pytest.mark.skipif(HELM is None, reason="no helm binary (see tests/deploy/test_chart.py)")
def test_the_chart_ships_each_dashboard_as_a_sidecar_configmap() -> None:
    assert not [o for o in render() if "-dashboard-" in o["metadata"]["name"]]  # off by default
    objects = render(sets=["dashboards.enabled=true", "colour=green"])
    maps = [o for o in of_kind(objects, "ConfigMap") if "-dashboard-" in o["metadata"]["name"]]
    assert {m["metadata"]["name"] for m in maps} == {f"wab-whatsapp-coder-green-dashboard-{n}" for n in NAMES}
    expected = committed()
    for config_map in maps:
        metadata = config_map["metadata"]
        assert metadata["labels"]["grafana_dashboard"] == "1"
        assert metadata["labels"]["colour"] == "green"
        assert metadata["namespace"] == "bots"
        [(key, text)] = config_map["data"].items()
        name = metadata["name"].rsplit("-", 1)[1]
        assert key == f"whatsapp-coder-{name}.json"
        assert json.loads(text) == expected[name]  # shipped as committed, byte for byte in meaning
    # Production: to Grafana's namespace, in its folder.
    production = [
        o for o in of_kind(production_objects(), "ConfigMap") if "-dashboard-" in o["metadata"]["name"]
    ]
    assert len(production) == len(NAMES)
    for config_map in production:
        assert config_map["metadata"]["namespace"] == "monitoring"
        assert config_map["metadata"]["annotations"] == {"grafana_folder": "WhatsApp-Coder"}


def test_the_generator_stays_out_of_the_packaged_chart() -> None:
    ignored = (CHART / ".helmignore").read_text().splitlines()
    assert "dashboards/*.py" in ignored and "alerts/tests.yaml" in ignored
    assert not any(line.strip() in ("dashboards/", "dashboards/*.json", "alerts/") for line in ignored)
