"""The operator end to end: `kopf run --standalone -A -m wacoder_operator.handlers` (KopfRunner)
against kmock's Kubernetes emulation, reached through a kubeconfig as a cluster would be.

`helm` is a stand-in executable first on PATH that records its arguments and the values file
it was given (the operator cannot tell); while the file HELM_FAIL names exists, it fails as helm
does, that file's text on stderr. The test plays the cluster's controllers: when a colour
is installed it creates that release's Deployments (its AutoCoder's too when its values run
one), available at the installed version. The preview's checks are served by a local HTTP
server (WACODER_PREVIEW_URL) that verifies the operator's Twilio signature with twilio's own
RequestValidator, as the webhook does; the same server serves each colour's agent and notifier
metrics (WACODER_METRICS_URL), their queue depths as the test sets them.

RBAC against reality: every request kopf and the operator make to kmock (its request log; ours
carry the kubeconfig's token, the test's own do not) is checked, as each test ends, against the
operator chart's rendered ClusterRole; the last test checks that every rule it grants was used
by some request of these tests, or is in `NOT_REQUESTED_HERE` with the reason."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import stat
import sys
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import pytest
import yaml
from agent import metrics as agent_metrics
from aiohttp import web
from aiohttp.test_utils import TestServer
from devtools.stack import free_port
from kopf.testing import KopfRunner
from notifier import metrics as notifier_metrics
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from twilio.request_validator import RequestValidator

from tests.operator.test_crd_and_chart import (
    APP_CHART,
    HELM,
    HELM_VERBS,
    RESOURCES,
    granted,
    of_kind,
    render,
)

os.environ.setdefault("WACODER_OPERATOR_INTERVAL", "0.3")  # read when kopf imports the handlers

NS = "bots"
BOTS = "whatsappcoder.dev/v1alpha1/whatsappbots"
TOKEN = "test-auth-token"
API_TOKEN = "operator-token"  # the kubeconfig's: what tells the operator's requests from the test's
PUBLIC = "https://wa.acme.example.org"
COMPONENTS = ("webhook", "agent", "mcp-bridge", "notifier")

HELM_STAND_IN = """#!{python}
import json, os, pathlib, sys
args = sys.argv[1:]
values = pathlib.Path(args[args.index("-f") + 1]).read_text() if "-f" in args else None
fail = pathlib.Path(os.environ["HELM_FAIL"])
failed = fail.exists()
with open(os.environ["HELM_RECORD"], "a") as record:
    record.write(json.dumps({{"args": args, "values": values, "failed": failed}}) + "\\n")
if failed:
    sys.stderr.write(fail.read_text())
    sys.exit(1)
"""
HELM_STUCK = "Error: UPGRADE FAILED: another operation (install/upgrade/rollback) is in progress\n"


@dataclass(frozen=True)
class ApiCall:
    """One request to the API server, as RBAC sees it."""

    verb: str
    group: str
    resource: str  # "whatsappbots/status" for a subresource; a path for a non-resource URL
    namespace: str | None

    @property
    def rule(self) -> tuple[str, str, str]:
        return (self.group, self.resource, self.verb)


def api_calls(api: kmock.KubernetesEmulator) -> set[ApiCall]:
    """What kopf and the operator asked kmock for (they present the kubeconfig's token)."""
    calls = set()
    for request in list(api):
        headers = {key.lower(): value for key, value in request.headers.items()}
        if headers.get("authorization") != f"Bearer {API_TOKEN}":
            continue  # the test's own requests
        method = request.method.value
        resource = request.resource
        if resource is None or not resource.plural:
            calls.add(ApiCall(method.lower(), "", request.url.path, None))
            continue
        if method == "GET":
            watching = str(request.params.get("watch", "")).lower() in ("true", "1")
            verb = "watch" if watching else "get" if request.name else "list"
        else:
            verb = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[method]
            if verb == "delete" and not request.name:
                verb = "deletecollection"
        plural = resource.plural + (f"/{request.subresource}" if request.subresource else "")
        calls.add(ApiCall(verb, resource.group or "", plural, request.namespace))
    return calls


# Discovery: granted to every authenticated user by the cluster's system:discovery ClusterRole.
DISCOVERY = re.compile(r"/version|/api|/apis(/[^/]+){0,2}|/api/v1")


Rules = set[tuple[str, str, str]]


def refused(calls: Iterable[ApiCall], *chart_args: str) -> list[ApiCall]:
    """The calls the operator chart's RBAC (rendered by the real helm with `chart_args`) would
    refuse: a cluster-wide call needs the ClusterRole, one in a namespace it or that namespace's Role."""
    objects = render(*chart_args)
    cluster: Rules = set().union(*(granted(role) for role in of_kind(objects, "ClusterRole")))
    roles = {role["metadata"]["namespace"]: granted(role) for role in of_kind(objects, "Role")}
    return sorted(
        (
            call
            for call in calls
            if not (call.verb == "get" and DISCOVERY.fullmatch(call.resource))
            and call.rule not in cluster | (roles.get(call.namespace, set()) if call.namespace else set())
        ),
        key=str,
    )


def operator_grants(*chart_args: str) -> Rules:
    """Every rule the operator chart's (Cluster)Roles grant, wherever."""
    objects = render(*chart_args)
    return set().union(
        *(granted(role) for role in of_kind(objects, "ClusterRole") + of_kind(objects, "Role"))
    )


def helm_rules() -> dict[tuple[str, str, str], str]:
    kinds = {o["kind"] for o in render(chart=APP_CHART, release="acme-blue", namespace=NS)}
    kinds |= {
        o["kind"] for o in render("-f", str(APP_CHART / "ci" / "production-values.yaml"), chart=APP_CHART)
    }
    reason = "helm upgrade --install / uninstall of the app chart's kinds (the stand-in helm calls no API)"
    return {(*RESOURCES[kind], verb): reason for kind in kinds for verb in HELM_VERBS}


# Granted but never requested in these tests, and why.
NOT_REQUESTED_HERE: dict[tuple[str, str, str], str] = {
    ("whatsappcoder.dev", "whatsappbots/finalizers", "update"): (
        "no request: OwnerReferencesPermissionEnforcement checks it when the ConfigMap and Services"
        " are written with blockOwnerDeletion ownerReferences to the bot"
    ),
    **{
        ("", "secrets", verb): "helm's release records (helm stores each release revision in a Secret)"
        for verb in ("list", "create", "update", "delete")
    },
}
USED: set[ApiCall] = set()  # by every wiring test so far
FINISHED: set[str] = set()  # the tests whose requests are in USED
needs_helm = pytest.mark.skipif(HELM is None, reason="no helm binary to render the operator chart's RBAC")


def bot(version: str = "1.0", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "whatsappcoder.dev/v1alpha1",
        "kind": "WhatsAppBot",
        "metadata": {
            "name": "acme",
            "namespace": NS,
            "generation": 1,
            "uid": "uid-acme",
            "resourceVersion": "1",
        },
        "spec": {
            "version": version,
            "whitelist": ["+15551234567"],
            "twilio": {
                "secretRef": {"name": "acme-twilio"},
                "whatsappNumber": "whatsapp:+14155238886",
                "publicBaseUrl": PUBLIC,
            },
            "redis": {"urlSecretRef": {"name": "acme-redis"}},
            "rollout": {"scaleDownDelaySeconds": 2, "progressDeadlineSeconds": 60},
            **spec,
        },
    }


class Preview:
    """The preview colour's webhook, as far as the promotion checks see it."""

    def __init__(self) -> None:
        self.token = TOKEN
        self.messages: list[dict[str, str]] = []

    async def readyz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def webhook(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        signature = request.headers.get("X-Twilio-Signature", "")
        if not RequestValidator(self.token).validate(f"{PUBLIC}/webhook/whatsapp", form, signature):
            return web.Response(status=403, text="forbidden")
        self.messages.append(form)
        return web.Response(
            text='<?xml version="1.0" encoding="UTF-8"?><Response/>', content_type="application/xml"
        )

    async def probe_reply(self, request: web.Request) -> web.Response:
        """The reply to a probe it was sent: the help text, as the real agent answers /help."""
        signature = request.headers.get("X-Twilio-Signature", "")
        if not RequestValidator(self.token).validate(f"{PUBLIC}{request.path}", {}, signature):
            return web.Response(status=403, text="forbidden")
        sids = {m.get("MessageSid") for m in self.messages if m.get("Body") == "/help"}
        if request.match_info["sid"] not in sids:
            return web.Response(status=404, text="no reply yet")
        return web.Response(text="Commands: /new, /run, /help")


GAUGES = {  # the services' own queue-depth gauges
    "agent": agent_metrics.INBOX_DEPTH.describe()[0].name,
    "notifier": notifier_metrics.OUTBOX_DEPTH.describe()[0].name,
}


class Queues:
    """Each colour's agent and notifier metrics: their queue depths per shard, as set by the test
    (empty unless told), in Prometheus' text format."""

    def __init__(self) -> None:
        self.depths: dict[tuple[str, str], list[int]] = {}  # (colour, component) -> per shard
        self.scrapes: list[tuple[str, str]] = []

    def set(self, colour: str, inbox: list[int], outbox: list[int]) -> None:
        self.depths[(colour, "agent")], self.depths[(colour, "notifier")] = inbox, outbox

    async def metrics(self, request: web.Request) -> web.Response:
        colour, component = request.match_info["colour"], request.match_info["component"]
        self.scrapes.append((colour, component))
        registry = CollectorRegistry()
        gauge = Gauge(GAUGES[component], "queue depth, per shard", ["shard"], registry=registry)
        for shard, depth in enumerate(self.depths.get((colour, component), [0, 0, 0, 0])):
            gauge.labels(str(shard)).set(depth)
        return web.Response(body=generate_latest(registry), content_type="text/plain")


class Cluster:
    """kmock's emulated API, the recorded helm calls, and the controllers the test plays."""

    def __init__(self, api: kmock.KubernetesEmulator, record: Path, helm_fail: Path) -> None:
        self.api, self.record, self.helm_fail = api, record, helm_fail
        self.seen_calls = 0
        self.runner: KopfRunner | None = None
        self.queues = Queues()

    def start_operator(self) -> None:
        self.runner = KopfRunner(["run", "--standalone", "-A", "-m", "wacoder_operator.handlers"], timeout=30)
        self.runner.__enter__()

    async def stop_operator(self) -> None:
        """Stops it (its thread joined off the loop kmock serves on); it must have exited cleanly."""
        assert self.runner is not None
        runner, self.runner = self.runner, None
        await asyncio.to_thread(runner.__exit__, None, None, None)
        assert runner.exception is None, runner.output

    def helm_calls(self) -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines()]

    def get(self, resource: str, name: str) -> dict[str, Any] | None:
        key = (kmock.resource(resource), NS, name)
        if key not in self.api.objects or self.api.objects[key].deleted:
            return None
        raw: dict[str, Any] = self.api.objects[key].raw
        return raw

    def status(self) -> dict[str, Any]:
        return (self.get(BOTS, "acme") or {}).get("status") or {}

    def condition(self, type_: str) -> dict[str, Any]:
        return next(c for c in self.status().get("conditions", []) if c["type"] == type_)

    def selector(self, service: str) -> str | None:
        found = self.get("v1/services", service)
        return None if found is None else found["spec"]["selector"]["colour"]

    def events(self) -> list[tuple[str, str, str]]:
        return [
            (o.raw["type"], o.raw["reason"], o.raw["message"])
            for key, o in self.api.objects.items()
            if key[0].plural == "events" and not o.deleted
        ]

    async def call(self, method: str, path: str, body: Any, merge: bool = False) -> int:
        headers = {"Content-Type": "application/merge-patch+json" if merge else "application/json"}
        async with self.api.request(method, path, data=json.dumps(body), headers=headers) as response:
            return response.status

    async def apply_bot(self, body: dict[str, Any]) -> None:
        await self.call("POST", f"/apis/whatsappcoder.dev/v1alpha1/namespaces/{NS}/whatsappbots", body)

    async def patch_bot(self, patch: dict[str, Any]) -> None:
        path = f"/apis/whatsappcoder.dev/v1alpha1/namespaces/{NS}/whatsappbots/acme"
        generation = (self.get(BOTS, "acme") or {})["metadata"]["generation"]
        if "spec" in patch:  # the API server's part: a spec change is a new generation
            patch = {**patch, "metadata": {**patch.get("metadata", {}), "generation": generation + 1}}
        await self.call("PATCH", path, patch, merge=True)

    async def play_controllers(self) -> None:
        """Each new `helm upgrade --install`: its Deployments, available at the values' image tag."""
        calls = self.helm_calls()
        for call in calls[self.seen_calls :]:
            args = call["args"]
            if args[0] == "upgrade" and not call["failed"]:
                values = yaml.safe_load(call["values"])
                release, tag = args[2], values["image"]["tag"]
                for component in COMPONENTS + (("autocoder",) if values["autocoder"]["enabled"] else ()):
                    await self.deployment(release, component, tag)
        self.seen_calls = len(calls)

    def replicas(self, release: str, component: str) -> int:
        return int((self.get("apps/v1/deployments", f"{release}-{component}") or {})["spec"]["replicas"])

    async def set_available(self, release: str, component: str, available: bool) -> None:
        """What the Deployment controller reports when its pods come and go."""
        status = {
            "availableReplicas": 2 if available else 0,
            "conditions": [{"type": "Available", "status": str(available)}],
        }
        path = f"/apis/apps/v1/namespaces/{NS}/deployments/{release}-{component}"
        assert await self.call("PATCH", path, {"status": status}, merge=True) == 200

    async def deployment(self, release: str, component: str, tag: str) -> None:
        name = f"{release}-{component}"
        body = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": name,
                "namespace": NS,
                "generation": 1,
                "labels": {"app.kubernetes.io/instance": release, "app.kubernetes.io/component": component},
            },
            "spec": {
                "replicas": 1 if component == "autocoder" else 2,
                "template": {
                    "spec": {"containers": [{"name": component, "image": f"ghcr.io/x/{component}:{tag}"}]}
                },
            },
            "status": {
                "observedGeneration": 1,
                "replicas": 2,
                "updatedReplicas": 2,
                "availableReplicas": 2,
            },
        }
        collection = f"/apis/apps/v1/namespaces/{NS}/deployments"
        if await self.call("POST", collection, body) == 409:
            await self.call("PATCH", f"{collection}/{name}", body, merge=True)

    async def until(self, what: str, check: Callable[[], bool], within_s: float = 20) -> None:
        deadline = asyncio.get_running_loop().time() + within_s
        while not check():
            if asyncio.get_running_loop().time() > deadline:
                bot = self.get(BOTS, "acme") or {}
                raise AssertionError(f"timed out waiting for: {what}; {json.dumps(bot)[:3000]}")
            await self.play_controllers()
            await asyncio.sleep(0.1)


@pytest.fixture
async def emulated(
    kmock: kmock.KubernetesEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Cluster, Preview]]:
    """kmock with the bots' API, the helm stand-in first on PATH, the preview, the bot's Secret,
    and the environment an operator started now would read: no operator yet."""
    kmock.resources.load_bundled()
    kmock.resources[BOTS] = kmock.ResourceInfo(
        namespaced=True,
        kind="WhatsAppBot",
        singular="whatsappbot",
        shortnames={"wab"},
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
        subresources={"status"},
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    helm = bin_dir / "helm"
    helm.write_text(HELM_STAND_IN.format(python=sys.executable))
    helm.chmod(helm.stat().st_mode | stat.S_IEXEC)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "kmock", "cluster": {"server": str(kmock.url).rstrip("/")}}],
                "users": [{"name": "test", "user": {"token": API_TOKEN}}],
                "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "test"}}],
                "current-context": "kmock",
            }
        )
    )
    preview = Preview()
    app = web.Application()
    app.router.add_get("/readyz", preview.readyz)
    app.router.add_post("/webhook/whatsapp", preview.webhook)
    app.router.add_get("/webhook/probe/{sid}", preview.probe_reply)
    world = Cluster(kmock, tmp_path / "helm.jsonl", tmp_path / "helm-fails")
    app.router.add_get("/{colour}/{component}/metrics", world.queues.metrics)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("HELM_BIN", raising=False)
    monkeypatch.setenv("HELM_RECORD", str(tmp_path / "helm.jsonl"))
    monkeypatch.setenv("HELM_FAIL", str(tmp_path / "helm-fails"))
    monkeypatch.setenv("WACODER_CHART", "/charts/whatsapp-coder")
    monkeypatch.setenv("WACODER_PREVIEW_URL", f"http://127.0.0.1:{server.port}")
    monkeypatch.setenv(
        "WACODER_METRICS_URL", f"http://127.0.0.1:{server.port}/{{colour}}/{{component}}/metrics"
    )
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "acme-twilio", "namespace": NS},
        "data": {"twilio-auth-token": base64.b64encode(TOKEN.encode()).decode()},
    }
    await world.call("POST", f"/api/v1/namespaces/{NS}/secrets", secret)
    try:
        yield world, preview
    finally:
        await server.close()


@pytest.fixture
async def cluster(
    emulated: tuple[Cluster, Preview], kmock: kmock.KubernetesEmulator, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[Cluster, Preview]]:
    """The above with the operator running in-process (KopfRunner: --standalone -A)."""
    world, preview = emulated
    world.start_operator()
    try:
        yield world, preview
    finally:
        await world.stop_operator()
    calls = api_calls(kmock)
    if HELM is not None:
        assert not refused(calls), "the operator chart's RBAC refuses these"
    USED.update(calls)
    FINISHED.add(request.node.name)


async def healthy_on_blue(world: Cluster, preview: Preview, **spec: Any) -> None:
    await world.apply_bot(bot(**spec))
    await world.until("blue installed and promoted", lambda: world.status().get("phase") == "Healthy")
    assert world.status()["activeColour"] == "blue" and world.status()["activeVersion"] == "1.0"
    assert world.condition("Ready")["status"] == "True"


async def test_create_update_rollout_and_delete(cluster: tuple[Cluster, Preview]) -> None:
    world, preview = cluster
    await healthy_on_blue(world, preview)
    [install] = world.helm_calls()
    assert install["args"][:7] == [
        "upgrade",
        "--install",
        "acme-blue",
        "/charts/whatsapp-coder",
        "-n",
        NS,
        "-f",
    ]
    # The CRD is the operator chart's: its service account may not create it.
    assert install["args"][8:] == ["--skip-crds"]
    values = yaml.safe_load(install["values"])
    assert (
        values["colour"] == "blue"
        and values["image"]["tag"] == "1.0"
        and values["routing"]["enabled"] is False
    )
    assert values["botConfig"]["existingConfigMap"] == "acme-bot"
    assert world.selector("acme-active") == world.selector("acme-preview") == "blue"
    # The operator's own objects belong to the bot: Kubernetes' garbage collector removes them with it.
    owner = {
        "apiVersion": "whatsappcoder.dev/v1alpha1",
        "kind": "WhatsAppBot",
        "name": "acme",
        "uid": "uid-acme",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    for resource, name in (
        ("v1/configmaps", "acme-bot"),
        ("v1/services", "acme-active"),
        ("v1/services", "acme-preview"),
    ):
        assert (world.get(resource, name) or {})["metadata"].get("ownerReferences") == [owner], name
    config = world.get("v1/configmaps", "acme-bot")
    assert config is not None and yaml.safe_load(config["data"]["bot.yaml"])["allowedPhoneNumbers"] == [
        "+15551234567"
    ]
    assert preview.messages and preview.messages[0]["From"] not in (
        "whatsapp:+15551234567",
    )  # not whitelisted

    # The whitelist: the ConfigMap changes in place, helm is not called.
    await world.patch_bot({"spec": {"whitelist": ["+15551234567", "+15557654321"]}})
    await world.until(
        "the ConfigMap has the new whitelist",
        lambda: (
            "+15557654321"
            in (world.get("v1/configmaps", "acme-bot") or {"data": {"bot.yaml": ""}})["data"]["bot.yaml"]
        ),
    )
    await asyncio.sleep(1)
    assert len(world.helm_calls()) == 1 and world.status()["phase"] == "Healthy"

    # The version: blue/green onto green, the active Service switches, blue scales down after the delay.
    await world.patch_bot({"spec": {"version": "2.0"}})
    await world.until("green promoted", lambda: world.status().get("activeColour") == "green")
    assert world.selector("acme-active") == "green"
    upgrade = world.helm_calls()[1]
    assert upgrade["args"][:3] == ["upgrade", "--install", "acme-green"]
    assert yaml.safe_load(upgrade["values"])["image"]["tag"] == "2.0"
    # One AutoCoder for the bot: blue's; green's bridges are pointed at it.
    assert yaml.safe_load(install["values"])["autocoder"]["enabled"] is True
    assert yaml.safe_load(upgrade["values"])["autocoder"] == {
        "enabled": False,
        "mcpUrl": "http://acme-blue-autocoder.bots.svc.cluster.local:8765/mcp",
    }
    assert world.status()["autocoderColour"] == "blue"
    last = world.status()["lastRollout"]
    assert (last["fromVersion"], last["toVersion"], last["result"]) == ("1.0", "2.0", "Promoted")
    assert ("Normal", "Promoted") in [(t, r) for t, r, _ in world.events()]
    await world.until("blue scaled down", lambda: world.status().get("phase") == "Healthy", within_s=10)
    assert ("blue", "agent") in world.queues.scrapes and ("blue", "notifier") in world.queues.scrapes
    assert all(world.replicas("acme-blue", c) == 0 for c in COMPONENTS)
    assert world.replicas("acme-blue", "autocoder") == 1  # green's bridges use it
    assert world.condition("Degraded")["status"] == "False"
    assert world.condition("Ready")["observedGeneration"] == 3

    # Deleting: both releases uninstalled, the finalizer released.
    await world.call("DELETE", f"/apis/whatsappcoder.dev/v1alpha1/namespaces/{NS}/whatsappbots/acme", {})
    await world.until("the bot is gone", lambda: world.get(BOTS, "acme") is None)
    uninstalls = [c["args"][:2] for c in world.helm_calls() if c["args"][0] == "uninstall"]
    assert sorted(uninstalls) == [["uninstall", "acme-blue"], ["uninstall", "acme-green"]]


async def test_a_failing_check_rolls_back_and_reports_degraded(cluster: tuple[Cluster, Preview]) -> None:
    world, preview = cluster
    await healthy_on_blue(world, preview)
    preview.token = "another-token"  # the preview refuses the operator's signature
    await world.patch_bot({"spec": {"version": "2.0"}})
    await world.until("the rollout aborted", lambda: world.status().get("phase") == "Aborted")
    assert world.status()["activeColour"] == "blue" and world.selector("acme-active") == "blue"
    assert world.selector("acme-preview") == "blue"
    degraded = world.condition("Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "PromotionCheckFailed"
    assert "403" in degraded["message"] and degraded["observedGeneration"] == 2
    assert any(t == "Warning" and r == "PromotionCheckFailed" for t, r, _ in world.events())
    assert all(
        (world.get("apps/v1/deployments", f"acme-green-{c}") or {})["spec"]["replicas"] == 0
        for c in COMPONENTS
    )
    assert world.status()["lastRollout"]["result"] == "Aborted"


async def test_a_restarted_operator_resumes_a_paused_rollout_and_promotes_on_annotation(
    cluster: tuple[Cluster, Preview],
) -> None:
    world, preview = cluster
    await healthy_on_blue(world, preview)
    await world.patch_bot(
        {"spec": {"version": "2.0", "rollout": {"autoPromote": False, "scaleDownDelaySeconds": 2}}}
    )
    await world.until("checks passed, awaiting promotion", lambda: world.status().get("phase") == "Paused")
    assert world.condition("Progressing")["reason"] == "AwaitingPromotion"
    calls = len(world.helm_calls())

    await world.stop_operator()  # all the rollout's state is in the status: nothing to lose
    world.start_operator()
    await asyncio.sleep(1.5)
    assert world.status()["phase"] == "Paused" and world.status()["activeColour"] == "blue"
    assert len(world.helm_calls()) == calls  # resumed without installing anything again

    await world.patch_bot({"metadata": {"annotations": {"whatsappcoder.dev/promote": "true"}}})
    await world.until("promoted by annotation", lambda: world.status().get("activeColour") == "green")
    assert world.selector("acme-active") == "green"
    await world.until(
        "the annotation consumed",
        lambda: (
            "whatsappcoder.dev/promote"
            not in ((world.get(BOTS, "acme") or {})["metadata"].get("annotations") or {})
        ),
    )


def warnings(world: Cluster) -> list[tuple[str, str]]:
    return [(reason, message) for type_, reason, message in world.events() if type_ == "Warning"]


async def test_the_old_colour_drains_its_queues_before_it_scales_down(
    cluster: tuple[Cluster, Preview],
) -> None:
    """What blue accepted before the switch is handled by blue, not left in its queues; past the
    drain deadline it is scaled down anyway, and the bot says how many messages it left."""
    world, preview = cluster
    await healthy_on_blue(world, preview)
    world.queues.set("blue", inbox=[2, 0, 1, 0], outbox=[0, 1, 0, 0])  # 3 inbox entries, 1 reply
    await world.patch_bot({"spec": {"version": "2.0"}})
    await world.until("blue drains", lambda: world.status().get("phase") == "Draining")

    def progressing() -> str:
        return str(world.condition("Progressing")["message"])

    await world.until("the backlog counted", lambda: "4 messages left" in progressing())
    assert world.condition("Progressing")["reason"] == "Draining"
    assert "(3 in its agent's inbox, 1 in its notifier's outbox)" in progressing()
    world.queues.set("blue", inbox=[0, 0, 0, 0], outbox=[0, 1, 0, 0])  # blue's agent handled them
    await world.until("read again", lambda: "1 message left" in progressing())
    assert all(world.replicas("acme-blue", c) == 2 for c in COMPONENTS)  # still up, reconciles later
    world.queues.set("blue", inbox=[0, 0, 0, 0], outbox=[0, 0, 0, 0])  # ... and its notifier sent
    await world.until("blue scaled down", lambda: world.status().get("phase") == "Healthy")
    assert all(world.replicas("acme-blue", c) == 0 for c in COMPONENTS)
    assert world.condition("Degraded")["status"] == "False" and not warnings(world)

    # Back onto blue; green keeps 2 messages that never go. Shortening the deadline reaches it now.
    world.queues.set("green", inbox=[0, 0, 0, 2], outbox=[0, 0, 0, 0])
    await world.patch_bot({"spec": {"version": "3.0"}})
    await world.until("green drains", lambda: world.status().get("phase") == "Draining")
    assert world.status()["activeColour"] == "blue"
    await world.patch_bot({"spec": {"rollout": {"scaleDownDelaySeconds": 2, "progressDeadlineSeconds": 1}}})
    await world.until("green scaled down anyway", lambda: world.status().get("phase") == "Healthy")
    assert all(world.replicas("acme-green", c) == 0 for c in COMPONENTS)
    degraded = world.condition("Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "DrainDeadlineExceeded")
    assert "green was scaled down at its drain deadline with 2 messages left" in degraded["message"]
    assert world.status()["releases"]["green"]["leftBehind"] == {"inbox": 2, "outbox": 0}
    (warning,) = [m for r, m in warnings(world) if r == "DrainDeadlineExceeded"]
    assert "2 messages left (2 in its agent's inbox, 0 in its notifier's outbox)" in warning
    assert world.condition("Ready")["status"] == "True"  # blue serves meanwhile


async def test_a_promoted_colour_that_stops_serving_in_the_window_is_rolled_back_at_once(
    cluster: tuple[Cluster, Preview],
) -> None:
    world, preview = cluster
    await healthy_on_blue(
        world, preview, rollout={"scaleDownDelaySeconds": 120, "progressDeadlineSeconds": 60}
    )
    await world.patch_bot({"spec": {"version": "2.0"}})
    await world.until("green promoted", lambda: world.status().get("phase") == "ScaleDownDelay")
    assert world.selector("acme-active") == "green"
    await world.set_available("acme-green", "agent", False)  # green's agents crash-loop
    await world.until("traffic back on blue", lambda: world.selector("acme-active") == "blue")
    await world.until("the status says so", lambda: world.status().get("phase") == "Aborted")
    assert world.status()["activeColour"] == "blue" and world.selector("acme-preview") == "blue"
    degraded = world.condition("Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "PromotedUnavailable")
    assert "green (2.0) stopped serving within the scale-down window" in degraded["message"]
    assert world.condition("Ready")["status"] == "True"
    assert world.status()["lastRollout"]["result"] == "RolledBack"
    (rolled_back,) = [m for r, m in warnings(world) if r == "RolledBack"]
    assert "traffic back on blue (1.0)" in rolled_back
    await world.until(
        "green scaled down", lambda: all(world.replicas("acme-green", c) == 0 for c in COMPONENTS)
    )
    assert all(world.replicas("acme-blue", c) == 2 for c in COMPONENTS)
    assert [c["args"][2] for c in world.helm_calls() if c["args"][0] == "upgrade"] == [
        "acme-blue",
        "acme-green",
    ]  # nothing was installed to roll back: blue was warm


async def test_helm_failing_ends_degraded_at_the_deadline_and_traffic_stays_on_the_old_colour(
    cluster: tuple[Cluster, Preview],
) -> None:
    world, _ = cluster
    rollout = {"scaleDownDelaySeconds": 1, "progressDeadlineSeconds": 3}
    # A first install that cannot succeed: helm keeps failing (a release stuck pending-upgrade).
    world.helm_fail.write_text("coalesce.go:286: warning: skipped value\n" + HELM_STUCK)
    await world.apply_bot(bot(rollout=rollout))
    await world.until(
        "the failure in the status while it is retried",
        lambda: (
            world.status().get("phase") == "Deploying"
            and world.condition("Progressing")["reason"] == "HelmFailed"
        ),
    )
    progressing = world.condition("Progressing")
    assert "helm upgrade --install acme-blue" in progressing["message"]
    assert HELM_STUCK.strip() in progressing["message"] and "warning" not in progressing["message"]
    assert world.status()["phaseSince"] == world.status()["currentRollout"]["startedAt"]
    await world.until("the deadline aborted it", lambda: world.status().get("phase") == "Aborted")
    assert len([c for c in world.helm_calls() if c["args"][0] == "upgrade"]) >= 2  # retried meanwhile
    ready, degraded = world.condition("Ready"), world.condition("Degraded")
    assert (ready["status"], ready["reason"]) == ("False", "Aborted")
    assert (degraded["status"], degraded["reason"]) == ("True", "ProgressDeadlineExceeded")
    assert "Deploying for more than 3s" in degraded["message"] and "another operation" in degraded["message"]
    assert degraded["observedGeneration"] == 1
    reasons = [reason for reason, _ in warnings(world)]
    assert reasons.count("HelmFailed") == 1 and "ProgressDeadlineExceeded" in reasons
    assert world.get("v1/services", "acme-active") is None  # nothing ever served
    calls = len(world.helm_calls())
    await asyncio.sleep(1)  # Aborted is stable: helm is not called again
    assert len(world.helm_calls()) == calls

    # helm works again; the promote annotation retries, and blue serves.
    world.helm_fail.unlink()
    await world.patch_bot({"metadata": {"annotations": {"whatsappcoder.dev/promote": "true"}}})
    await world.until("blue installed", lambda: world.status().get("phase") == "Healthy")
    assert world.condition("Ready")["status"] == "True" and world.condition("Degraded")["status"] == "False"
    assert world.status().get("failure") is None

    # A rollout whose helm fails: aborted at the deadline, traffic never left blue.
    world.helm_fail.write_text("Error: UPGRADE FAILED: chart requires kubeVersion >=1.40.0\n")
    await world.patch_bot({"spec": {"version": "2.0"}})
    await world.until("the rollout aborted", lambda: world.status().get("phase") == "Aborted")
    assert world.selector("acme-active") == "blue" and world.status()["activeColour"] == "blue"
    degraded = world.condition("Degraded")
    assert degraded["reason"] == "ProgressDeadlineExceeded" and "kubeVersion" in degraded["message"]
    assert (
        world.condition("Ready")["status"] == "True" and world.condition("Ready")["observedGeneration"] == 2
    )
    assert any(r == "ProgressDeadlineExceeded" and "traffic stays on blue" in m for r, m in warnings(world))


async def test_ready_follows_the_active_colours_deployments_after_promotion(
    cluster: tuple[Cluster, Preview],
) -> None:
    world, preview = cluster
    await healthy_on_blue(world, preview)
    calls = len(world.helm_calls())

    async def agent_available(available: bool) -> None:
        status = {
            "availableReplicas": 2 if available else 0,
            "conditions": [{"type": "Available", "status": str(available)}],
        }
        path = f"/apis/apps/v1/namespaces/{NS}/deployments/acme-blue-agent"
        assert await world.call("PATCH", path, {"status": status}, merge=True) == 200

    await agent_available(False)  # blue's agent pods went away (their node did)
    await world.until("Ready is False", lambda: world.condition("Ready")["status"] == "False")
    ready = world.condition("Ready")
    assert ready["reason"] == "ActiveUnavailable" and "blue" in ready["message"]
    assert ready["observedGeneration"] == 1
    assert world.status()["phase"] == "Healthy" and len(world.helm_calls()) == calls  # no rollout
    assert any(r == "ActiveUnavailable" for r, _ in warnings(world))
    await agent_available(True)
    await world.until("Ready is True again", lambda: world.condition("Ready")["status"] == "True")
    assert world.condition("Ready")["reason"] == "Serving" and len(world.helm_calls()) == calls
    assert ("Normal", "ActiveAvailable") in [(t, r) for t, r, _ in world.events()]


WATCHING_BOTS = ("--set-json", f'watchNamespaces=["{NS}"]')  # the chart as WATCH_NAMESPACE runs it


@pytest.mark.e2e
async def test_python_m_wacoder_operator_serves_its_namespace_and_answers_its_liveness_probe(
    emulated: tuple[Cluster, Preview],
    kmock: kmock.KubernetesEmulator,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """The operator as its chart runs it (main.py): a process of its own, WATCH_NAMESPACE and
    LIVENESS_ENDPOINT from the environment; a bot in another namespace is not its business."""
    world, _ = emulated
    port = free_port()
    elsewhere = bot()
    elsewhere["metadata"] = {**elsewhere["metadata"], "namespace": "elsewhere", "uid": "uid-elsewhere"}
    await world.call("POST", "/apis/whatsappcoder.dev/v1alpha1/namespaces/elsewhere/whatsappbots", elsewhere)
    env = {
        **os.environ,
        "WATCH_NAMESPACE": NS,
        "LIVENESS_ENDPOINT": f"http://127.0.0.1:{port}/healthz",
        "WACODER_OPERATOR_INTERVAL": "0.3",
    }
    log = tmp_path / "operator.log"
    with log.open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "wacoder_operator", env=env, stdout=output, stderr=output
        )
    try:
        deadline = asyncio.get_running_loop().time() + 30
        async with aiohttp.ClientSession() as http:
            while True:
                assert process.returncode is None, log.read_text()[-3000:]
                assert asyncio.get_running_loop().time() < deadline, log.read_text()[-3000:]
                try:
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)
        await world.apply_bot(bot())
        await world.until("blue installed and promoted", lambda: world.status().get("phase") == "Healthy")
        assert world.condition("Ready")["status"] == "True"
        other = world.api.objects[(kmock.resource(BOTS), "elsewhere", "acme")].raw
        assert "status" not in other and not other["metadata"].get("finalizers")  # never touched
        assert [c["args"][2] for c in world.helm_calls() if c["args"][0] == "upgrade"] == ["acme-blue"]
    finally:
        process.terminate()
        returncode = await asyncio.wait_for(process.wait(), 30)
    assert returncode == 0, log.read_text()[-3000:]  # SIGTERM: kopf stops cleanly
    calls = api_calls(kmock)
    assert not {c for c in calls if c.namespace not in (None, NS)}, "it reached outside WATCH_NAMESPACE"
    if HELM is not None:
        assert not refused(calls, *WATCHING_BOTS), "the chart's RBAC for watchNamespaces refuses these"
    USED.update(calls)
    FINISHED.add(request.node.name)


@needs_helm
def test_every_rule_the_operator_chart_grants_is_requested_or_documented() -> None:
    """Runs last: the requests of every test above, against the rendered ClusterRole."""
    others = {name for name in globals() if name.startswith("test_") and name != this_test()}
    if not others <= FINISHED:
        pytest.skip(f"needs the requests of every wiring test; not run here: {sorted(others - FINISHED)}")
    documented = {**helm_rules(), **NOT_REQUESTED_HERE}
    used = {call.rule for call in USED}
    for variant in ((), WATCHING_BOTS):  # all namespaces (a ClusterRole), WATCH_NAMESPACE (Roles)
        grants = operator_grants(*variant)
        assert set(documented) <= grants, f"documented but not granted: {set(documented) - grants}"
        unused = grants - used - set(documented)
        assert not unused, f"{variant}: granted, never requested, no reason given: {sorted(unused)}"
    # the operator's own calls are among them (not only kopf's)
    assert ApiCall("patch", "whatsappcoder.dev", "whatsappbots/status", NS) in USED
    assert ApiCall("patch", "apps", "deployments", NS) in USED
    assert ApiCall("get", "", "secrets", NS) in USED


def this_test() -> str:
    return "test_every_rule_the_operator_chart_grants_is_requested_or_documented"
