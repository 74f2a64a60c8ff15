"""The kopf handlers: thin. Each one (create, update, resume, the timer) calls `reconcile`, which
reads the bot afresh, observes the cluster, asks the state machine (`rollout.decide`), runs the
actions and writes the status; the delete handler (behind kopf's finalizer) uninstalls both
colours' releases. One bot is reconciled by one task at a time.

A failing helm or Kubernetes API call is not an exception around the state machine but an input
to it: a read that fails is reported in `Observed.error`; an action that fails stops the actions
after it (but the Events and annotation clean-ups, which only tell) and `Decision.failed` gives
the status to write, so the phase's clock runs and its deadline can abort the rollout. Only when
the bot itself cannot be read or its status written does the handler raise for kopf to retry.

Environment: HELM_BIN (else `helm` from PATH), WACODER_CHART (the chart to install; default the
checkout's charts/whatsapp-coder), WACODER_IMAGE_REPOSITORY (optional image.repository),
WACODER_PREVIEW_URL (the promotion checks' base URL template, `{bot}` and `{namespace}`),
WACODER_METRICS_URL (where a draining colour's queue depths are read, wacoder_operator.backlog),
WACODER_OPERATOR_INTERVAL (seconds between timer reconciles, default 10)."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import kopf

from wacoder_operator.backlog import DEFAULT_METRICS_URL, BacklogReader, HttpBacklogReader
from wacoder_operator.checks import (
    ALL_CHECKS,
    DEFAULT_PREVIEW_URL,
    DEFAULT_PUBLIC_BASE_URL,
    DEFAULT_SENDER,
    Checker,
    HttpChecker,
)
from wacoder_operator.helm import Helm, HelmCli, HelmError
from wacoder_operator.kube import (
    GROUP,
    PLURAL,
    VERSION,
    BotRef,
    Kube,
    KubeApi,
    KubeError,
    colour_available,
    colour_serving,
)
from wacoder_operator.rollout import (
    Action,
    ApplyRelease,
    CheckResult,
    ClearAnnotation,
    Colour,
    Decision,
    Emit,
    Observed,
    Phase,
    Route,
    ScaleDown,
    Status,
    WriteConfigMap,
    decide,
)
from wacoder_operator.values import (
    bot_config,
    config_hash,
    config_map_name,
    helm_values,
    release_name,
    rollout_spec,
)

log = logging.getLogger("wacoder_operator")
_T = TypeVar("_T")

DEFAULT_CHART = Path(__file__).resolve().parents[2] / "charts" / "whatsapp-coder"
INTERVAL_S = float(os.environ.get("WACODER_OPERATOR_INTERVAL", "10"))
MAX_STEPS = 5  # transitions one reconcile may chain (Deploying -> Verifying -> promoted)


@dataclass
class Operator:
    kube: Kube
    helm: Helm
    checker: Checker
    backlog: BacklogReader
    image_repository: str | None = None
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    locks: dict[tuple[str, str], asyncio.Lock] = field(default_factory=dict)

    async def reconcile(self, ref: BotRef) -> None:
        async with self.locks.setdefault((ref.namespace, ref.name), asyncio.Lock()):
            body = await self.kube.bot(ref)
            if body is None or body["metadata"].get("deletionTimestamp"):
                return
            meta, raw = body["metadata"], body.get("spec") or {}
            annotations = dict(meta.get("annotations") or {})
            stored = body.get("status") or {}
            status = Status.from_dict(stored)
            for _ in range(MAX_STEPS):
                spec = rollout_spec(
                    ref.name, raw, int(meta.get("generation") or 1), annotations, self.image_repository
                )
                decision = decide(spec, status, await self._observe(ref, raw, status), self.clock())
                decision, ok = await self._execute(ref, raw, decision)
                if decision.status.to_dict() != {key: stored.get(key) for key in decision.status.to_dict()}:
                    await self.kube.patch_status(ref, decision.status.to_dict())
                    stored = {**stored, **decision.status.to_dict()}
                # Chained steps: promote/abort were acted on (and cleared) by the first.
                annotations = {k: v for k, v in annotations.items() if not k.startswith(GROUP)}
                if not ok or decision.status.phase == status.phase:
                    break  # a failure is retried by the next reconcile (the timer), not at once
                status = decision.status

    async def _observe(self, ref: BotRef, raw: Mapping[str, Any], status: Status) -> Observed:
        errors: list[str] = []

        async def read(call: Awaitable[_T], default: _T) -> _T:
            try:
                return await call
            except (KubeError, aiohttp.ClientError) as error:
                _, operation, detail = _describe(error)
                errors.append(f"{operation}: {detail}")
                return default

        available, serving, seen = set(), set(), True
        for colour, release in status.releases.items():
            if not release.scaled_down:
                found = await read(self.kube.deployments(ref, release_name(ref.name, colour)), None)
                if found is None:
                    seen = False
                    continue
                if colour_available(found, release.version):
                    available.add(colour)
                if colour_serving(found):
                    serving.add(colour)
        checks = None
        if status.phase is Phase.VERIFYING and status.preview is not None and not errors:
            checks = await self._checks(ref, raw, read)
        backlog = None  # the old colour's queues, read while it drains
        old = status.releases.get(status.active.other()) if status.active else None
        if status.phase is Phase.DRAINING and status.active and old is not None and not old.scaled_down:
            backlog = await self.backlog.read(ref.name, ref.namespace, status.active.other())
        config = await read(self.kube.config_map(ref, config_map_name(ref.name)), None)
        routes = await read(self.kube.routes(ref), {})
        return Observed(
            config_hash=config_hash(config),
            routes=routes,
            available=frozenset(available),
            checks=checks,
            serving=frozenset(serving) if seen else None,
            error="; ".join(errors) or None,
            backlog=backlog,
        )

    async def _checks(
        self, ref: BotRef, raw: Mapping[str, Any], read: Callable[[Awaitable[Any], Any], Awaitable[Any]]
    ) -> CheckResult | None:
        twilio = raw.get("twilio") or {}
        secret = twilio.get("secretRef") or raw.get("secretRef") or {"name": f"{ref.name}-secrets"}
        unread = object()  # the Secret could not be read (not: it has no token): check later
        token = await read(
            self.kube.secret_value(ref, secret["name"], secret.get("authTokenKey", "twilio-auth-token")),
            unread,
        )
        if token is unread:
            return None
        result: CheckResult = await self.checker.run(
            bot=ref.name,
            namespace=ref.namespace,
            checks=(raw.get("rollout") or {}).get("promotionChecks", ALL_CHECKS),
            public_base_url=twilio.get("publicBaseUrl") or DEFAULT_PUBLIC_BASE_URL,
            auth_token=token,
            recipient=twilio.get("whatsappNumber") or DEFAULT_SENDER,
        )
        return result

    async def _execute(
        self, ref: BotRef, raw: Mapping[str, Any], decision: Decision
    ) -> tuple[Decision, bool]:
        """Runs the actions in order; after a failure only those that tell (Events, annotation
        clean-ups: the status records what they were about). (the decision to record, no failure)"""
        undone: list[Action] = []
        failure: tuple[str, str, str] | None = None
        for action in decision.actions:
            if failure is not None and not isinstance(action, (Emit, ClearAnnotation)):
                undone.append(action)
                continue
            try:
                await self._run(ref, raw, action, decision.status)
            except (HelmError, KubeError, aiohttp.ClientError) as error:
                log.warning("%s/%s: %s failed: %s", ref.namespace, ref.name, action, error)
                if isinstance(action, Emit):
                    continue  # an Event that cannot be posted changes nothing in the cluster
                undone.append(action)
                failure = failure or _describe(error)
        if failure is None:
            return decision, True
        failed = decision.failed(undone, *failure)
        for event in failed.actions:
            await self._tell(ref, event)
        return failed, False

    async def _tell(self, ref: BotRef, action: Action) -> None:
        try:
            await self._run(ref, {}, action, Status())
        except (KubeError, aiohttp.ClientError) as error:
            log.warning("%s/%s: %s failed: %s", ref.namespace, ref.name, action, error)

    async def _run(self, ref: BotRef, raw: Mapping[str, Any], action: Action, status: Status) -> None:
        """One action; `status` is the one decided with it (which colour hosts the AutoCoder)."""
        log.info("%s/%s: %s", ref.namespace, ref.name, action)
        match action:
            case WriteConfigMap():
                await self.kube.write_config_map(ref, config_map_name(ref.name), bot_config(raw))
            case ApplyRelease(colour=colour):
                values = helm_values(
                    ref.name, raw, colour, self.image_repository, status.autocoder, ref.namespace
                )
                await self.helm.upgrade_install(release_name(ref.name, colour), ref.namespace, values)
            case Route(active=active, preview=preview):
                for role, colour_or_none in (("active", active), ("preview", preview)):
                    if colour_or_none is not None:
                        await self.kube.route(ref, role, colour_or_none)
            case ScaleDown(colour=colour, keep_autocoder=keep_autocoder):
                keep = ("autocoder",) if keep_autocoder else ()
                await self.kube.scale_down(ref, release_name(ref.name, colour), keep)
            case Emit(type=type_, reason=reason, message=message):
                await self.kube.event(ref, type_, reason, message)
            case ClearAnnotation(key=key):
                await self.kube.clear_annotation(ref, key)

    async def uninstall(self, ref: BotRef) -> None:
        for colour in Colour:
            await self.helm.uninstall(release_name(ref.name, colour), ref.namespace)
        await self.kube.event(ref, "Normal", "Uninstalled", "both colours' Helm releases uninstalled")


def _describe(error: Exception) -> tuple[str, str, str]:
    """(condition reason, operation, message) of a failed call."""
    if isinstance(error, HelmError):
        return "HelmFailed", error.operation, error.detail
    if isinstance(error, KubeError):
        return "KubernetesApiFailed", error.operation, error.detail
    return "KubernetesApiFailed", "the Kubernetes API", repr(error)


# --- kopf wiring ---------------------------------------------------------------------------------

_runtime: dict[str, Any] = {}


def operator() -> Operator:
    if "operator" not in _runtime:
        connection = _runtime.get("connection")
        if connection is None:
            raise kopf.TemporaryError("not logged in to the Kubernetes API yet", delay=1)
        _runtime["operator"] = Operator(
            kube=KubeApi.from_connection(connection),
            helm=HelmCli(os.environ.get("WACODER_CHART") or str(DEFAULT_CHART)),
            checker=HttpChecker(os.environ.get("WACODER_PREVIEW_URL") or DEFAULT_PREVIEW_URL),
            backlog=HttpBacklogReader(os.environ.get("WACODER_METRICS_URL") or DEFAULT_METRICS_URL),
            image_repository=os.environ.get("WACODER_IMAGE_REPOSITORY") or None,
        )
    operator_: Operator = _runtime["operator"]
    return operator_


def watch_namespaces() -> list[str]:
    """WATCH_NAMESPACE: the namespaces served (comma-separated); empty: all of them."""
    return [ns.strip() for ns in os.environ.get("WATCH_NAMESPACE", "").split(",") if ns.strip()]


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    _runtime.clear()
    # Serving named namespaces, kopf need not list every Namespace or watch the CRDs to find
    # them (cluster-wide reads the chart's per-namespace Roles do not grant): the WhatsAppBot
    # resource is discovered once at startup (the chart installs the CRD before the operator).
    settings.scanning.disabled = bool(watch_namespaces())
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.posting.level = logging.WARNING  # our own Events say what happened; kopf's only failures
    # A deleted bot waits for a timer run in flight: let it finish, and look again soon after.
    settings.background.instant_exit_timeout = 1.0
    settings.background.cancellation_polling = 1.0


@kopf.on.cleanup()
async def close(**_: Any) -> None:
    if "operator" in _runtime and isinstance(_runtime["operator"].kube, KubeApi):
        await _runtime["operator"].kube.close()
    _runtime.clear()


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    info = kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
    _runtime["connection"] = info
    if info is not None and "operator" in _runtime:  # a re-login (a rotated token): ours follows
        _runtime["operator"].kube.headers = info.as_http_headers()
    return info


def _ref(body: Mapping[str, Any]) -> BotRef:
    meta = body["metadata"]
    return BotRef(namespace=meta["namespace"], name=meta["name"], uid=meta.get("uid", ""))


async def _reconcile(body: Mapping[str, Any]) -> None:
    ref = _ref(body)
    try:
        await operator().reconcile(ref)
    except (HelmError, KubeError, aiohttp.ClientError) as error:
        try:
            await operator().kube.event(ref, "Warning", "ReconcileFailed", str(error))
        except (KubeError, aiohttp.ClientError):
            pass
        raise kopf.TemporaryError(str(error), delay=10) from error


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
async def changed(body: kopf.Body, **_: Any) -> None:
    await _reconcile(body)


@kopf.timer(GROUP, VERSION, PLURAL, interval=INTERVAL_S)
async def tick(body: kopf.Body, **_: Any) -> None:
    """Time passes without events: deadlines, the scale-down delay, Deployments becoming available."""
    await _reconcile(body)


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def deleted(body: kopf.Body, **_: Any) -> None:
    try:
        await operator().uninstall(_ref(body))
    except (HelmError, KubeError) as error:
        raise kopf.TemporaryError(str(error), delay=10) from error
