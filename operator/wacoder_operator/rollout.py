"""The blue/green rollout of one WhatsAppBot: a pure state machine.

`decide(spec, status, observed, now)` returns the actions to take and the next status; it does no
I/O, so every transition is tested without Helm or Kubernetes. All of a rollout's state lives in
the status it returns (written to the resource's status subresource), so an operator restarted
in any phase picks up where it was, and deciding again on the same inputs asks for nothing new.

Phases (Argo Rollouts' blue/green is the model):

    (new) ──> Deploying ──> Verifying ──> [Paused] ──> ScaleDownDelay ──> Draining ──> Healthy
                  ^  (a new spec retargets the preview)       │  (abort, or the new colour
    Healthy ──────┘                                           │   unavailable: instant rollback)
    Deploying | Verifying | Paused ── check failed, deadline, abort ──> Aborted

- Deploying: the idle colour's Helm release is installed/upgraded; waits for its Deployments.
- Verifying: the promotion checks run against the preview (its /readyz, a signed synthetic message).
- Paused: checks passed, `autoPromote: false`: waits for the promote annotation.
- ScaleDownDelay: `<bot>-active` switched; the old colour stays warm for `scaleDownDelaySeconds`
  (an abort, the spec going back to the old revision, or the new colour becoming unavailable
  switches back at once).
- Draining: the delay is over; the old colour stays up until its agent's inbox and its notifier's
  outbox are empty (`Observed.backlog`: what it accepted is handled, not left waiting until it
  next runs), then scales to 0; `progressDeadlineSeconds` after the delay it scales down anyway
  (a Warning Event; Degraded says how many messages it left, until that colour runs again).
  Rollback stays instant while it drains.
- Healthy: the active colour runs what the spec asks. Aborted: traffic stayed on (or went back
  to) the old colour, Degraded says why, until the spec changes or a promote annotation retries.

Each waiting phase (Deploying, Verifying, Paused) aborts after `progressDeadlineSeconds` in it,
counted from the phase's start, which is in the status even when the phase's first action failed.

Failures of Helm and of the Kubernetes API are part of the machine, not exceptions around it: the
handler runs a decision's actions and, when one fails, `Decision.failed` gives the status to write
instead (the release marked pending, the failure and its message in the conditions, a Warning
Event when it starts). The next decision retries what did not happen; a waiting phase still aborts
at its deadline, so a release that cannot be installed ends Aborted, Degraded saying why.

Ready is observed, not remembered: it is True only while the active colour's Deployments serve
(`Observed.serving`), on every reconcile, without starting a rollout when it changes; inside the
scale-down window (ScaleDownDelay, Draining) a promoted colour that stops serving while the old
one serves is rolled back.

One reference AutoCoder per bot (`spec.autocoder.mcpUrl` unset): the first colour installed hosts
it (`Status.autocoder`); the other colour's values point its bridges at it, and scaling the host
colour down keeps its AutoCoder (`ScaleDown.keep_autocoder`), so users' projects are where they
were after a switch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

PROMOTE_ANNOTATION = "whatsappcoder.dev/promote"
ABORT_ANNOTATION = "whatsappcoder.dev/abort"


class Colour(StrEnum):
    BLUE = "blue"
    GREEN = "green"

    def other(self) -> Colour:
        return Colour.GREEN if self is Colour.BLUE else Colour.BLUE


class Phase(StrEnum):
    DEPLOYING = "Deploying"
    VERIFYING = "Verifying"
    PAUSED = "Paused"
    SCALE_DOWN_DELAY = "ScaleDownDelay"
    DRAINING = "Draining"
    HEALTHY = "Healthy"
    ABORTED = "Aborted"


_E = TypeVar("_E", bound=StrEnum)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ROLLING = (Phase.DEPLOYING, Phase.VERIFYING, Phase.PAUSED)  # the waiting phases: each has a deadline
WARM = (Phase.SCALE_DOWN_DELAY, Phase.DRAINING)  # switched, the old colour still up: rollback is instant
ACTIVE_UNAVAILABLE = "ActiveUnavailable"  # Ready's reason while the active colour does not serve
PROMOTED_UNAVAILABLE = "PromotedUnavailable"  # rolled back: the new colour stopped serving in the window
DRAIN_DEADLINE = "DrainDeadlineExceeded"  # the old colour scaled down with messages left in its queues
READ = "reading the cluster"  # the operation of a failed observation
FAILURE_MESSAGE_LIMIT = 400  # characters of an error kept in the status (conditions, Events)


# --- inputs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """What the resource asks for, reduced to what the state machine compares."""

    generation: int
    version: str
    revision: str  # what a colour's pods run (Helm values but replicas): a change rolls out
    values_hash: str  # all of a colour's Helm values: a change (replicas only) re-applies in place
    config_hash: str  # the bot's ConfigMap (whitelist, limits, temperature): rewritten in place
    auto_promote: bool = True
    scale_down_delay_s: int = 300
    progress_deadline_s: int = 600
    promote: bool = False  # the promote annotation is set
    abort: bool = False  # the abort annotation is set
    own_autocoder: bool = True  # spec.autocoder.mcpUrl unset: the bot runs the reference AutoCoder


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    message: str


@dataclass(frozen=True)
class Backlog:
    """What a colour's queues still hold: its agent's inbox (entries not yet handled) and its
    notifier's outbox (messages not yet sent), from their depth gauges."""

    inbox: int = 0
    outbox: int = 0
    error: str | None = None  # the gauges could not be read (the counts are then not known)

    @property
    def total(self) -> int:
        return self.inbox + self.outbox

    def describe(self) -> str:
        if self.error is not None:
            return f"its queues could not be read ({self.error})"
        return (
            f"{self.total} message{'s' if self.total != 1 else ''} left ({self.inbox} in its agent's"
            f" inbox, {self.outbox} in its notifier's outbox)"
        )


@dataclass(frozen=True)
class Observed:
    """What the cluster shows now."""

    config_hash: str | None = None  # of the bot's ConfigMap; None: absent
    routes: Mapping[str, Colour | None] = field(default_factory=dict)  # "active"/"preview" -> selected
    available: frozenset[Colour] = frozenset()  # colours whose Deployments run their release, available
    checks: CheckResult | None = None  # the promotion checks of the preview (run while Verifying)
    # colours whose Deployments answer now (minimally available, whatever the version); None:
    # they could not be read
    serving: frozenset[Colour] | None = None
    error: str | None = None  # a read of the Kubernetes API failed: what was not seen, and why
    # the old colour's queues (read while Draining); None: not read
    backlog: Backlog | None = None


# --- status ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Release:
    """What the operator last installed as one colour's Helm release."""

    version: str
    revision: str
    values_hash: str
    scaled_down: bool = False
    pending: bool = False  # its last `helm upgrade --install` failed: the next decision retries it
    # scaled down at its drain deadline with this in its queues: it waits until the colour runs again
    left_behind: Backlog | None = None


@dataclass(frozen=True)
class Failure:
    """An operation of the last reconcile that failed (Helm or the Kubernetes API); cleared by a
    reconcile that fails nothing."""

    reason: str  # HelmFailed, KubernetesApiFailed
    operation: str  # e.g. "helm upgrade --install acme-green"
    message: str  # the error, trimmed
    since: datetime  # the first of this operation's failures in a row


@dataclass(frozen=True)
class Rollout:
    from_version: str | None
    to_version: str
    from_colour: Colour | None
    to_colour: Colour
    revision: str
    started_at: datetime
    finished_at: datetime | None = None
    result: str | None = None  # Promoted, Aborted, Cancelled, RolledBack
    reason: str | None = None
    message: str | None = None


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool | None  # None: Unknown
    reason: str
    message: str
    observed_generation: int
    last_transition_time: datetime


@dataclass(frozen=True)
class Status:
    phase: Phase | None = None
    phase_since: datetime | None = None
    observed_generation: int | None = None
    active: Colour | None = None
    preview: Colour | None = None
    releases: Mapping[Colour, Release] = field(default_factory=dict)
    current: Rollout | None = None
    last: Rollout | None = None
    conditions: tuple[Condition, ...] = ()
    failure: Failure | None = None
    autocoder: Colour | None = None  # the colour whose release runs the bot's reference AutoCoder

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)

    def to_dict(self) -> dict[str, Any]:
        """The status subresource: every key present (None removes it in a merge patch)."""
        active = self.releases.get(self.active) if self.active else None
        return {
            "phase": self.phase.value if self.phase else None,
            "phaseSince": _time(self.phase_since),
            "observedGeneration": self.observed_generation,
            "activeColour": self.active.value if self.active else None,
            "previewColour": self.preview.value if self.preview else None,
            "activeVersion": active.version if active else None,
            "releases": {
                colour.value: {
                    "version": r.version,
                    "revision": r.revision,
                    "valuesHash": r.values_hash,
                    "scaledDown": r.scaled_down,
                    "pending": r.pending,
                    "leftBehind": _backlog_dict(r.left_behind),
                }
                for colour, r in sorted(self.releases.items())
            },
            "autocoderColour": self.autocoder.value if self.autocoder else None,
            "failure": _failure_dict(self.failure),
            "currentRollout": _rollout_dict(self.current),
            "lastRollout": _rollout_dict(self.last),
            "conditions": [
                {
                    "type": c.type,
                    "status": _condition_status(c.status),
                    "reason": c.reason,
                    "message": c.message,
                    "observedGeneration": c.observed_generation,
                    "lastTransitionTime": _time(c.last_transition_time),
                }
                for c in self.conditions
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Status:
        data = data or {}
        releases = {
            Colour(colour): Release(
                version=str(r["version"]),
                revision=str(r["revision"]),
                values_hash=str(r["valuesHash"]),
                scaled_down=bool(r.get("scaledDown", False)),
                pending=bool(r.get("pending", False)),
                left_behind=_parse_backlog(r.get("leftBehind")),
            )
            for colour, r in (data.get("releases") or {}).items()
            if colour in Colour.__members__.values()
        }
        return cls(
            phase=_enum(Phase, data.get("phase")),
            phase_since=_parse_time(data.get("phaseSince")),
            observed_generation=data.get("observedGeneration"),
            active=_enum(Colour, data.get("activeColour")),
            preview=_enum(Colour, data.get("previewColour")),
            releases=releases,
            current=_parse_rollout(data.get("currentRollout")),
            last=_parse_rollout(data.get("lastRollout")),
            conditions=tuple(
                Condition(
                    type=str(c["type"]),
                    status={"True": True, "False": False}.get(str(c.get("status"))),
                    reason=str(c.get("reason", "")),
                    message=str(c.get("message", "")),
                    observed_generation=int(c.get("observedGeneration") or 0),
                    last_transition_time=_parse_time(c.get("lastTransitionTime")) or EPOCH,
                )
                for c in data.get("conditions") or ()
            ),
            failure=_parse_failure(data.get("failure")),
            autocoder=_enum(Colour, data.get("autocoderColour")),
        )


# --- actions -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WriteConfigMap:
    """Create or update the bot's ConfigMap from the spec (both colours read it live)."""


@dataclass(frozen=True)
class ApplyRelease:
    """`helm upgrade --install <bot>-<colour>` with the values the spec gives that colour."""

    colour: Colour


@dataclass(frozen=True)
class Route:
    """Point `<bot>-active` and `<bot>-preview` at these colours (None: leave that one alone)."""

    active: Colour | None
    preview: Colour | None


@dataclass(frozen=True)
class ScaleDown:
    """Scale a colour's Deployments to zero (its release stays; the next apply scales it up);
    `keep_autocoder`: but its AutoCoder, which the bot's other colour uses."""

    colour: Colour
    keep_autocoder: bool = False


@dataclass(frozen=True)
class Emit:
    """A Kubernetes Event on the bot."""

    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass(frozen=True)
class ClearAnnotation:
    key: str


Action = WriteConfigMap | ApplyRelease | Route | ScaleDown | Emit | ClearAnnotation


@dataclass(frozen=True)
class Decision:
    actions: tuple[Action, ...]
    status: Status
    # what it was decided on, for `failed` (not part of the decision itself)
    inputs: tuple[Spec, Status, Observed, datetime] | None = field(default=None, compare=False, repr=False)

    def failed(self, undone: Sequence[Action], reason: str, operation: str, message: str) -> Decision:
        """What to record when running this decision's actions failed: `undone` are the actions
        that did not happen (the failing one among them), `operation` and `message` what failed.

        The decided phase stands (its clock started: the deadline counts from it), releases that
        were not applied are pending (retried by the next decision), colours that were not scaled
        down are not marked so, and the conditions name the failure. The actions returned are the
        Events to post: a Warning when this operation starts failing, not at each retry."""
        assert self.inputs is not None
        spec, before, observed, now = self.inputs
        releases = dict(self.status.releases)
        for action in undone:
            if isinstance(action, ApplyRelease) and action.colour in releases:
                releases[action.colour] = replace(releases[action.colour], pending=True)
            elif isinstance(action, ScaleDown) and action.colour in releases:
                was = before.releases.get(action.colour)
                releases[action.colour] = replace(
                    releases[action.colour], scaled_down=bool(was and was.scaled_down)
                )
        previous = before.failure
        repeated = previous is not None and previous.operation == operation
        failure = Failure(reason, operation, _trim(message), previous.since if previous and repeated else now)
        status = replace(self.status, releases=releases, failure=failure)
        step = _Step(spec, replace(status, conditions=before.conditions), observed, now)
        status = replace(status, conditions=step._conditions())
        events: tuple[Action, ...] = ()
        if not repeated:
            retry = "retrying at each reconcile"
            if status.phase in ROLLING:
                retry += f"; the rollout aborts at {_time(step._deadline())}"
            events = (Emit("Warning", reason, f"{operation}: {failure.message}; {retry}"),)
        return Decision(events, status, self.inputs)


def decide(spec: Spec, status: Status, observed: Observed, now: datetime) -> Decision:
    return _Step(spec, status, observed, now.replace(microsecond=0)).run()


# --- the machine -------------------------------------------------------------------------------


class _Step:
    def __init__(self, spec: Spec, status: Status, observed: Observed, now: datetime) -> None:
        self.spec, self.s, self.observed, self.now = spec, status, observed, now
        self.before = status
        self.applies: list[Action] = []
        self.scales: list[Action] = []
        self.events: list[Action] = []

    def run(self) -> Decision:
        phase = self.s.phase
        if phase is None or (phase in (Phase.HEALTHY, *WARM) and self.s.active is None):
            self._start_rollout()
        elif phase in ROLLING:
            self._rolling()
        elif phase in WARM:
            self._warm()
        elif phase is Phase.HEALTHY:
            self._healthy()
        else:
            self._aborted()
        return self._decision()

    # phases

    def _healthy(self) -> None:
        if self.spec.abort:
            self._emit("Normal", "AbortIgnored", "no rollout to abort")
        active = self._release(self.s.active)
        if self.spec.revision != active.revision:
            self._start_rollout()
            return
        if self.spec.values_hash != active.values_hash or active.pending:
            self._apply(self._active())  # replicas only (or a failed apply again): in place, no rollout
        self._scale_idle()

    def _rolling(self) -> None:
        spec, s = self.spec, self.s
        preview = s.preview or (s.active.other() if s.active else Colour.BLUE)
        target = s.releases.get(preview)
        if spec.abort:
            self._abort("AbortRequested", f"aborted by the {ABORT_ANNOTATION} annotation")
        elif s.active is not None and spec.revision == self._release(s.active).revision:
            self._scale(preview)
            self._emit("Normal", "RolloutCancelled", f"the spec is back to {spec.version}, which is active")
            self._finish("Cancelled", "SpecReverted", f"the spec went back to {spec.version}", Phase.HEALTHY)
        elif target is None or spec.values_hash != target.values_hash:
            self._apply(preview)
            assert s.current is not None
            current = replace(s.current, to_version=spec.version, revision=spec.revision)
            self.s = replace(self.s, current=current)
            self._emit("Normal", "RolloutRetargeted", f"the preview ({preview}) now gets {spec.version}")
            self._enter(Phase.DEPLOYING)
        elif target.pending and not self._deadline_passed():
            self._apply(preview)  # the last apply failed: again, in the same phase and on its clock
        elif target.pending or (not self._progress(preview) and self._deadline_passed()):
            message = f"{s.phase} for more than {spec.progress_deadline_s}s (progressDeadlineSeconds)"
            if s.failure is not None:
                message += f"; the last error: {s.failure.operation}: {s.failure.message}"
            self._abort("ProgressDeadlineExceeded", message)

    def _progress(self, preview: Colour) -> bool:
        """The step a waiting phase takes when it can; False: still waiting."""
        phase, checks = self.s.phase, self.observed.checks
        if phase is Phase.DEPLOYING:
            if preview in self.observed.available:
                self._enter(Phase.VERIFYING)
                return True
        elif phase is Phase.VERIFYING:
            if checks is not None and not checks.ok:
                self._abort("PromotionCheckFailed", checks.message)
                return True
            if checks is not None and (self.spec.auto_promote or self.spec.promote):
                self._promote()
                return True
            if checks is not None:
                message = f"checks passed; annotate {PROMOTE_ANNOTATION}=true to promote"
                self._emit("Normal", "AwaitingPromotion", message)
                self._enter(Phase.PAUSED)
                return True
        elif self.spec.promote:  # Paused
            self._promote()
            return True
        return False

    def _warm(self) -> None:
        """ScaleDownDelay and Draining: switched, the old colour still up (rollback is instant)."""
        spec, active = self.spec, self._active()
        old = active.other()
        old_release, new_release = self.s.releases.get(old), self._release(active)
        reverted = old_release is not None and spec.revision == old_release.revision
        if spec.abort and old_release is not None:
            self._roll_back("AbortRequested", f"aborted by the {ABORT_ANNOTATION} annotation", Phase.ABORTED)
        elif reverted and spec.revision != new_release.revision:
            self._roll_back("SpecReverted", f"the spec went back to {spec.version}", Phase.HEALTHY)
        elif spec.revision != new_release.revision:
            self._start_rollout()
        elif self._promoted_colour_down(old):
            message = f"{active} ({new_release.version}) stopped serving within the scale-down window"
            self._roll_back(PROMOTED_UNAVAILABLE, message, Phase.ABORTED)
        else:
            if spec.values_hash != new_release.values_hash or new_release.pending:
                self._apply(active)  # replicas only (or a failed apply again): in place
            if self.s.phase is Phase.SCALE_DOWN_DELAY and self.now >= self._warm_until():
                # the drain's deadline counts from the end of the delay, however late it is seen
                self._enter(Phase.DRAINING, since=self._warm_until())
            if self.s.phase is Phase.DRAINING:
                self._drain(old)

    def _promoted_colour_down(self, old: Colour) -> bool:
        """The promoted colour does not serve and the old one, still up, does: roll back."""
        serving, release = self.observed.serving, self.s.releases.get(old)
        return (
            serving is not None
            and self._active() not in serving
            and old in serving
            and release is not None
            and not release.scaled_down
        )

    def _drain(self, old: Colour) -> None:
        """The old colour scales down once its queues are empty, or at the drain deadline."""
        backlog = self.observed.backlog
        if backlog is not None and backlog.error is None and backlog.total == 0:
            self._scale(old)
            self._enter(Phase.HEALTHY)
        elif self._deadline_passed():
            left = backlog or Backlog(error="not read")
            self._scale(old, left_behind=left)
            after = f"progressDeadlineSeconds: {self.spec.progress_deadline_s}s after the scale-down delay"
            self._emit("Warning", DRAIN_DEADLINE, f"{_left_behind(old, left)} ({after})")
            self._enter(Phase.HEALTHY)

    def _aborted(self) -> None:
        spec, s = self.spec, self.s
        if s.active is not None and spec.revision == self._release(s.active).revision:
            active = self._release(s.active)
            if spec.values_hash != active.values_hash or active.pending:
                self._apply(s.active)
            self._emit("Normal", "Recovered", f"the spec is back to {spec.version}, which is active")
            self._enter(Phase.HEALTHY)
        elif spec.promote or s.last is None or spec.revision != s.last.revision:
            self._start_rollout()
            return
        self._scale_idle()

    # transitions

    def _start_rollout(self) -> None:
        s, spec = self.s, self.spec
        target = s.active.other() if s.active else Colour.BLUE
        old = s.releases.get(s.active) if s.active else None
        self.s = replace(
            s,
            preview=target,
            current=Rollout(
                from_version=old.version if old else None,
                to_version=spec.version,
                from_colour=s.active,
                to_colour=target,
                revision=spec.revision,
                started_at=self.now,
            ),
        )
        self._apply(target)
        source = f"{old.version} ({s.active})" if old else "nothing"
        self._emit("Normal", "RolloutStarted", f"{source} -> {spec.version} ({target})")
        self._enter(Phase.DEPLOYING)

    def _promote(self) -> None:
        s = self.s
        assert s.preview is not None and s.current is not None
        old = s.active
        self.s = replace(s, active=s.preview)
        message = f"{s.current.to_version} ({s.preview}) gets the traffic"
        if old is not None:
            message += f"; {old} stays warm for {self.spec.scale_down_delay_s}s"
        self._emit("Normal", "Promoted", message)
        self._finish("Promoted", "ChecksPassed", message, Phase.SCALE_DOWN_DELAY if old else Phase.HEALTHY)

    def _abort(self, reason: str, message: str) -> None:
        s = self.s
        if s.preview is not None and s.preview != s.active:
            self._scale(s.preview)
        where = f"traffic stays on {s.active}" if s.active else "nothing serves yet"
        self._emit("Warning", reason, f"rollout aborted: {message}; {where}")
        self._finish("Aborted", reason, message, Phase.ABORTED)

    def _roll_back(self, reason: str, message: str, phase: Phase) -> None:
        """Instant rollback inside the scale-down window: the old colour is warm."""
        s = self.s
        new = self._active()
        old = new.other()
        self.s = replace(s, active=old)
        self._scale(new)
        back = f"{message}: traffic back on {old} ({self._release(old).version})"
        self._emit("Warning", "RolledBack", back)
        if s.last is not None:
            last = replace(s.last, finished_at=self.now, result="RolledBack", reason=reason, message=message)
            self.s = replace(self.s, last=last)
        self._enter(phase)

    def _finish(self, result: str, reason: str, message: str, phase: Phase) -> None:
        s = self.s
        last = s.current and replace(
            s.current, finished_at=self.now, result=result, reason=reason, message=message
        )
        self.s = replace(s, current=None, preview=None, last=last or s.last)
        self._enter(phase)

    # helpers

    def _enter(self, phase: Phase, since: datetime | None = None) -> None:
        self.s = replace(self.s, phase=phase, phase_since=since or self.now)

    def _apply(self, colour: Colour) -> None:
        """Install/upgrade a colour (its queues run again: nothing is left behind in them)."""
        release = Release(self.spec.version, self.spec.revision, self.spec.values_hash)
        host = self.s.autocoder
        if self.spec.own_autocoder and host is None:
            host = colour  # the first colour installed with the reference AutoCoder hosts it
        elif not self.spec.own_autocoder and host is colour:
            host = None  # installed with an external AutoCoder: its own is removed
        self.s = replace(self.s, releases={**self.s.releases, colour: release}, autocoder=host)
        self.applies.append(ApplyRelease(colour))

    def _scale(self, colour: Colour, left_behind: Backlog | None = None) -> None:
        release = self.s.releases.get(colour)
        if release is not None:
            left = left_behind or release.left_behind
            scaled = replace(release, scaled_down=True, left_behind=left)
            self.s = replace(self.s, releases={**self.s.releases, colour: scaled})
        # The host's AutoCoder serves the other colour's bridges too: it stays while that one runs.
        other = self.s.releases.get(colour.other())
        keep = (
            self.spec.own_autocoder
            and colour is self.s.autocoder
            and other is not None
            and not other.scaled_down
        )
        self.scales.append(ScaleDown(colour, keep_autocoder=keep))

    def _emit(self, type_: str, reason: str, message: str) -> None:
        self.events.append(Emit(type_, reason, message))

    def _scale_idle(self) -> None:
        """Outside a rollout only the active colour runs (again, if a scale-down failed)."""
        for colour, release in sorted(self.s.releases.items()):
            if colour != self.s.active and not release.scaled_down:
                self._scale(colour)

    def _active(self) -> Colour:
        assert self.s.active is not None
        return self.s.active

    def _release(self, colour: Colour | None) -> Release:
        assert colour is not None
        return self.s.releases[colour]

    def _since(self) -> datetime:
        return self.s.phase_since or self.now

    def _deadline(self) -> datetime:
        return self._since() + timedelta(seconds=self.spec.progress_deadline_s)

    def _warm_until(self) -> datetime:
        """The end of the scale-down delay (Draining starts then)."""
        return self._since() + timedelta(seconds=self.spec.scale_down_delay_s)

    def _deadline_passed(self) -> bool:
        return self.now > self._deadline()

    def _decision(self) -> Decision:
        spec, observed = self.spec, self.observed
        failure = None
        if observed.error is not None:  # what could not be read: its clock runs as an action's would
            previous = self.before.failure
            since = previous.since if previous and previous.operation == READ else self.now
            failure = Failure("KubernetesApiFailed", READ, _trim(observed.error), since)
        self.s = replace(self.s, failure=failure)
        conditions = self._conditions()
        self._emit_ready_changes(conditions)
        s = self.s
        actions: list[Action] = []
        if observed.config_hash != spec.config_hash:
            actions.append(WriteConfigMap())
        actions += self.applies
        # Traffic moves before anything is scaled down: the routes follow the new status.
        active, preview = s.active, s.preview or s.active
        if (active and observed.routes.get("active") != active) or (
            preview and observed.routes.get("preview") != preview
        ):
            actions.append(Route(active, preview))
        actions += self.scales
        actions += self.events
        if spec.promote:
            actions.append(ClearAnnotation(PROMOTE_ANNOTATION))
        if spec.abort:
            actions.append(ClearAnnotation(ABORT_ANNOTATION))
        status = replace(s, observed_generation=spec.generation, conditions=conditions)
        return Decision(tuple(actions), status, (spec, self.before, observed, self.now))

    def _emit_ready_changes(self, conditions: tuple[Condition, ...]) -> None:
        """An Event when the active colour stops serving, and one when it serves again."""
        before, now = self.before.condition("Ready"), next(c for c in conditions if c.type == "Ready")
        was_down = before is not None and before.reason == ACTIVE_UNAVAILABLE
        if now.reason == ACTIVE_UNAVAILABLE and not was_down:
            self._emit("Warning", ACTIVE_UNAVAILABLE, now.message)
        elif was_down and now.status is True:
            self._emit("Normal", "ActiveAvailable", now.message)

    def _conditions(self) -> tuple[Condition, ...]:
        s, gen, failure = self.s, self.spec.generation, self.s.failure
        active = s.releases.get(s.active) if s.active else None
        last = s.last
        failing = f"{failure.operation}: {failure.message}" if failure else ""
        serving = self.observed.serving
        stranded = [  # colours scaled down at their drain deadline with messages in their queues
            (colour, r.left_behind)
            for colour, r in sorted(s.releases.items())
            if r.left_behind is not None and r.scaled_down and colour != s.active
        ]
        ready: tuple[bool | None, str, str]
        if active is None:
            not_yet = "no colour serves yet" + (f"; {failing}" if failure else "")
            ready = (False, "Aborted" if s.phase is Phase.ABORTED else "Installing", not_yet)
        elif serving is None:
            ready = (None, "ActiveNotObserved", f"{s.active}'s Deployments could not be read: {failing}")
        elif s.active not in serving:
            down = f"{s.active} ({active.version}) gets the traffic but its Deployments are not available"
            ready = (False, ACTIVE_UNAVAILABLE, down)
        elif s.phase in ROLLING:
            ready = (True, "RolloutInProgress", f"{s.active} serves {active.version} while a rollout runs")
        elif s.phase is Phase.ABORTED:
            ready = (True, "RolloutAborted", f"{s.active} serves {active.version}; the rollout was aborted")
        else:
            ready = (True, "Serving", f"{s.active} serves {active.version}")
        if s.phase in ROLLING:
            assert s.current is not None
            reason = "AwaitingPromotion" if s.phase is Phase.PAUSED else str(s.phase)
            message = f"{s.current.to_version} on {s.preview}: {s.phase}"
            if failure is not None:
                reason = failure.reason
                message += (
                    f"; {failing} (failing since {_time(failure.since)}, retried; the rollout aborts"
                    f" at {_time(self._deadline())})"
                )
            progressing = (True, reason, message)
        elif s.phase is Phase.SCALE_DOWN_DELAY:
            warm = f"{s.active} is active; {_old(s)} stays warm until {_time(self._warm_until())}"
            progressing = (False, "Promoted", warm)
        elif s.phase is Phase.DRAINING:
            backlog = self.observed.backlog
            left = backlog.describe() if backlog is not None else "its queues are read next"
            draining = (
                f"{s.active} is active; {_old(s)} drains before it scales down: {left}; it scales"
                f" down when they are empty, at the latest at {_time(self._deadline())}"
            )
            progressing = (False, "Draining", draining)
        elif s.phase is Phase.ABORTED and last is not None:
            progressing = (False, last.reason or "Aborted", last.message or "")
        else:
            progressing = (False, "UpToDate", "the active colour runs the spec")
        if s.phase is Phase.ABORTED and last is not None:
            degraded = (True, last.reason or "Aborted", last.message or "")
        elif failure is not None:
            degraded = (True, failure.reason, f"{failing} (since {_time(failure.since)}, retried)")
        elif stranded:
            degraded = (True, DRAIN_DEADLINE, _left_behind(*stranded[0]))
        else:
            degraded = (False, "AsExpected", "")
        return tuple(
            self._condition(type_, gen, *value)
            for type_, value in (("Ready", ready), ("Progressing", progressing), ("Degraded", degraded))
        )

    def _condition(self, type_: str, gen: int, status: bool | None, reason: str, message: str) -> Condition:
        before = self.s.condition(type_)
        since = before.last_transition_time if before is not None and before.status == status else self.now
        return Condition(type_, status, reason, message, gen, since)


def _left_behind(colour: Colour, left: Backlog) -> str:
    if left.error is not None:
        return (
            f"{colour} was scaled down at its drain deadline, its queues not read ({left.error});"
            f" what they held waits until {colour} runs again"
        )
    return (
        f"{colour} was scaled down at its drain deadline with {left.describe()}; they wait until"
        f" {colour} runs again"
    )


def _old(s: Status) -> str:
    return s.active.other().value if s.active else "-"


# --- serialisation -------------------------------------------------------------------------------


def _time(value: datetime | None) -> str | None:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value else None


def _trim(message: str) -> str:
    text = " ".join(message.split())
    if len(text) <= FAILURE_MESSAGE_LIMIT:
        return text
    return text[: FAILURE_MESSAGE_LIMIT - 1] + "…"


def _condition_status(value: bool | None) -> str:
    return "Unknown" if value is None else "True" if value else "False"


def _backlog_dict(b: Backlog | None) -> dict[str, Any] | None:
    if b is None:
        return None
    return {"inbox": b.inbox, "outbox": b.outbox, "error": b.error}


def _parse_backlog(data: Mapping[str, Any] | None) -> Backlog | None:
    if not data:
        return None
    error = data.get("error")
    inbox, outbox = int(data.get("inbox") or 0), int(data.get("outbox") or 0)
    return Backlog(inbox, outbox, None if error is None else str(error))


def _failure_dict(f: Failure | None) -> dict[str, Any] | None:
    if f is None:
        return None
    return {"reason": f.reason, "operation": f.operation, "message": f.message, "since": _time(f.since)}


def _parse_failure(data: Mapping[str, Any] | None) -> Failure | None:
    if not data:
        return None
    return Failure(
        reason=str(data.get("reason", "")),
        operation=str(data.get("operation", "")),
        message=str(data.get("message", "")),
        since=_parse_time(data.get("since")) or EPOCH,
    )


def _parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _enum(cls: type[_E], value: Any) -> _E | None:
    try:
        return cls(value) if value else None
    except ValueError:
        return None


def _rollout_dict(r: Rollout | None) -> dict[str, Any] | None:
    if r is None:
        return None
    return {
        "fromVersion": r.from_version,
        "toVersion": r.to_version,
        "fromColour": r.from_colour.value if r.from_colour else None,
        "toColour": r.to_colour.value,
        "revision": r.revision,
        "startedAt": _time(r.started_at),
        "finishedAt": _time(r.finished_at),
        "result": r.result,
        "reason": r.reason,
        "message": r.message,
    }


def _parse_rollout(data: Mapping[str, Any] | None) -> Rollout | None:
    if not data:
        return None
    return Rollout(
        from_version=data.get("fromVersion"),
        to_version=str(data["toVersion"]),
        from_colour=_enum(Colour, data.get("fromColour")),
        to_colour=Colour(data["toColour"]),
        revision=str(data.get("revision", "")),
        started_at=_parse_time(data.get("startedAt")) or EPOCH,
        finished_at=_parse_time(data.get("finishedAt")),
        result=data.get("result"),
        reason=data.get("reason"),
        message=data.get("message"),
    )
