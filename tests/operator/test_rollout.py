"""The blue/green state machine (wacoder_operator.rollout), with no Helm and no Kubernetes: a tiny
world applies the actions it asks for (routes switch, ConfigMap written, Deployments go
unavailable when a colour is re-applied or scaled down) and the test marks Deployments
available and serves check results. Every transition, an abort at each phase, retargeting,
instant rollback in the scale-down window, the deadline of each waiting phase, idempotence,
a restart at each phase (the status through JSON and back), and the conditions' bookkeeping.

The world can also fail as a cluster does: helm refusing every install, the API refusing a
kind of call, reads failing; the bot then runs its actions as the handler does (stop at the
first failure but for the Events, record it with `Decision.failed`). And the active colour's
Deployments can stop serving after promotion: Ready must say so, and say when they are back."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import pytest
from wacoder_operator.rollout import (
    ABORT_ANNOTATION,
    PROMOTE_ANNOTATION,
    Action,
    ApplyRelease,
    Backlog,
    CheckResult,
    ClearAnnotation,
    Colour,
    Decision,
    Emit,
    Observed,
    Phase,
    Route,
    ScaleDown,
    Spec,
    Status,
    WriteConfigMap,
    decide,
)
from wacoder_operator.values import rollout_spec

BLUE, GREEN = Colour.BLUE, Colour.GREEN
T0 = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
OK = CheckResult(True, "readyz 200; synthetic message answered")
FAILED = CheckResult(False, "synthetic message: HTTP 403 (signature refused)")


def spec(version: str = "1.0", generation: int = 1, **changes: object) -> Spec:
    base = Spec(
        generation=generation,
        version=version,
        revision=f"rev-{version}",
        values_hash=f"values-{version}",
        config_hash="config-1",
        scale_down_delay_s=300,
        progress_deadline_s=600,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


HELM_STUCK = "Error: UPGRADE FAILED: another operation (install/upgrade/rollback) is in progress"
FORBIDDEN = 'services "acme-active" is forbidden: User "system:serviceaccount:op" cannot patch'


@dataclass
class World:
    """The cluster as the actions leave it."""

    config_hash: str | None = None
    routes: dict[str, Colour | None] = field(default_factory=dict)
    available: set[Colour] = field(default_factory=set)
    checks: CheckResult | None = None
    applied: list[Colour] = field(default_factory=list)
    running: set[Colour] = field(default_factory=set)  # colours with pods (applied, not scaled down)
    down: set[Colour] = field(default_factory=set)  # colours whose pods the test made unavailable
    # what fails: an action -> (condition reason, operation, message); None: it succeeds
    refuses: Callable[[Action], tuple[str, str, str] | None] = lambda action: None
    read_error: str | None = None  # reading the cluster fails (the Deployments are not seen)
    backlog: Backlog = field(default_factory=Backlog)  # the old colour's queues (read while Draining)

    def observed(self) -> Observed:
        serving = None if self.read_error else frozenset(self.running - self.down)
        available = frozenset() if self.read_error else frozenset(self.available)
        return Observed(
            config_hash=self.config_hash,
            routes=dict(self.routes),
            available=available,
            checks=self.checks,
            serving=serving,
            error=self.read_error,
            backlog=self.backlog,
        )

    def run(self, decision: Decision, spec: Spec) -> Decision:
        """As the handler runs a decision: in order, after a failure only the Events."""
        undone: list[Action] = []
        failure = None
        for action in decision.actions:
            if failure is not None and not isinstance(action, (Emit, ClearAnnotation)):
                undone.append(action)
                continue
            refused = self.refuses(action)
            if refused is not None:
                undone.append(action)
                failure = failure or refused
                continue
            self.apply_one(action, spec)
        return decision if failure is None else decision.failed(undone, *failure)

    def apply(self, decision: Decision, spec: Spec) -> None:
        for action in decision.actions:
            self.apply_one(action, spec)

    def apply_one(self, action: Action, spec: Spec) -> None:
        if isinstance(action, WriteConfigMap):
            self.config_hash = spec.config_hash
        elif isinstance(action, ApplyRelease):
            self.applied.append(action.colour)
            self.running.add(action.colour)
            self.available.discard(action.colour)  # new pods: not available until they are
        elif isinstance(action, Route):
            if action.active:
                self.routes["active"] = action.active
            if action.preview:
                self.routes["preview"] = action.preview
        elif isinstance(action, ScaleDown):
            self.available.discard(action.colour)
            self.running.discard(action.colour)


def helm_refuses(action: Action) -> tuple[str, str, str] | None:
    if isinstance(action, ApplyRelease):
        return "HelmFailed", f"helm upgrade --install acme-{action.colour}", HELM_STUCK
    return None


@dataclass
class Bot:
    world: World = field(default_factory=World)
    status: Status = field(default_factory=Status)
    now: datetime = T0

    def step(self, spec: Spec, seconds: float = 1) -> Decision:
        """One reconcile: decide, run the actions in the world, keep the status it records."""
        self.now += timedelta(seconds=seconds)
        decision = self.world.run(decide(spec, self.status, self.world.observed(), self.now), spec)
        self.status = decision.status
        return decision


def kinds(decision: Decision) -> list[type]:
    return [type(a) for a in decision.actions]


def events(decision: Decision) -> list[tuple[str, str]]:
    return [(a.type, a.reason) for a in decision.actions if isinstance(a, Emit)]


def conditions(status: Status) -> dict[str, tuple[bool | None, str]]:
    return {c.type: (c.status, c.reason) for c in status.conditions}


def healthy(version: str = "1.0") -> Bot:
    """A new bot driven to Healthy on blue."""
    bot = Bot()
    bot.step(spec(version))
    bot.world.available.add(BLUE)
    bot.step(spec(version))
    bot.world.checks = OK
    bot.step(spec(version))
    bot.world.checks = None
    assert bot.status.phase is Phase.HEALTHY
    return bot


def rolling(phase: Phase, to: str = "2.0", **changes: object) -> Bot:
    """Healthy on blue 1.0, then a rollout to `to` on green brought to `phase`."""
    bot = healthy()
    target = spec(to, 2, **changes)
    bot.step(target)
    if phase is not Phase.DEPLOYING:
        bot.world.available.add(GREEN)
        bot.step(target)
    if phase in (Phase.PAUSED, Phase.SCALE_DOWN_DELAY, Phase.DRAINING, Phase.HEALTHY):
        bot.world.checks = OK
        bot.step(target)
        bot.world.checks = None
    if phase is Phase.DRAINING:
        bot.world.backlog = STUCK  # blue still holds messages when the delay ends
    if phase in (Phase.DRAINING, Phase.HEALTHY):
        bot.step(target, seconds=400)
    assert bot.status.phase is phase, bot.status
    return bot


STUCK = Backlog(inbox=3, outbox=2)


# --- transitions ---------------------------------------------------------------------------------


def test_a_new_bot_installs_blue_checks_it_and_routes_both_services_to_it() -> None:
    bot = Bot()
    first = bot.step(spec())
    assert first.actions[:2] == (WriteConfigMap(), ApplyRelease(BLUE))
    assert Route(None, BLUE) in first.actions  # the preview Service; <bot>-active waits for a colour
    assert ("Normal", "RolloutStarted") in events(first)
    assert bot.status.phase is Phase.DEPLOYING and bot.status.preview is BLUE and bot.status.active is None
    assert conditions(bot.status) == {
        "Ready": (False, "Installing"),
        "Progressing": (True, "Deploying"),
        "Degraded": (False, "AsExpected"),
    }
    assert bot.step(spec()).actions == ()  # Deployments not available yet: wait
    bot.world.available.add(BLUE)
    assert bot.step(spec()).actions == () and bot.status.phase is Phase.VERIFYING
    bot.world.checks = OK
    promoted = bot.step(spec())
    assert Route(BLUE, BLUE) in promoted.actions and ("Normal", "Promoted") in events(promoted)
    assert bot.status.phase is Phase.HEALTHY and bot.status.active is BLUE and bot.status.preview is None
    assert conditions(bot.status)["Ready"] == (True, "Serving")
    assert bot.status.last is not None and bot.status.last.result == "Promoted"
    assert bot.status.last.from_version is None and bot.status.last.to_version == "1.0"
    assert bot.status.current is None


def test_a_new_version_goes_blue_green_and_the_old_colour_scales_down_after_the_delay() -> None:
    bot = healthy()
    target = spec("2.0", 2)
    started = bot.step(target)
    assert kinds(started) == [ApplyRelease, Route, Emit]
    assert ApplyRelease(GREEN) in started.actions and Route(BLUE, GREEN) in started.actions
    current = bot.status.current
    assert current is not None and (current.from_version, current.to_version) == ("1.0", "2.0")
    assert (current.from_colour, current.to_colour, current.started_at) == (BLUE, GREEN, bot.now)
    assert conditions(bot.status)["Ready"] == (True, "RolloutInProgress")
    bot.world.available.add(GREEN)
    bot.step(target)
    assert bot.status.phase is Phase.VERIFYING
    bot.world.checks = OK
    promoted = bot.step(target)
    assert Route(GREEN, GREEN) in promoted.actions and ScaleDown not in kinds(promoted)
    assert bot.status.phase is Phase.SCALE_DOWN_DELAY and bot.status.active is GREEN
    assert bot.status.last is not None and bot.status.last.result == "Promoted"
    assert bot.status.last.finished_at == bot.now and bot.status.current is None
    bot.world.checks = None
    assert bot.step(target, seconds=100).actions == ()  # inside the window: warm
    done = bot.step(target, seconds=300)
    # Blue drained (its queues are empty) and scales down, but for the AutoCoder green's bridges use.
    assert done.actions == (ScaleDown(BLUE, keep_autocoder=True),)
    assert bot.status.phase is Phase.HEALTHY and bot.status.releases[BLUE].scaled_down
    assert bot.status.to_dict()["activeVersion"] == "2.0"


def test_without_auto_promote_it_pauses_until_the_promote_annotation() -> None:
    bot = rolling(Phase.PAUSED, auto_promote=False)
    manual = spec("2.0", 2, auto_promote=False)
    assert conditions(bot.status)["Progressing"] == (True, "AwaitingPromotion")
    assert bot.step(manual, seconds=60).actions == ()
    promoted = bot.step(replace(manual, promote=True))
    assert Route(GREEN, GREEN) in promoted.actions and ClearAnnotation(PROMOTE_ANNOTATION) in promoted.actions
    assert bot.status.phase is Phase.SCALE_DOWN_DELAY


def test_a_replicas_only_change_upgrades_the_active_colour_in_place() -> None:
    bot = healthy()
    scaled = bot.step(spec(values_hash="values-1.0-more-replicas"))
    assert scaled.actions == (ApplyRelease(BLUE),) and bot.status.phase is Phase.HEALTHY


# --- abort ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("phase", [Phase.DEPLOYING, Phase.VERIFYING, Phase.PAUSED])
def test_abort_by_annotation_in_each_waiting_phase_keeps_traffic_on_the_old_colour(phase: Phase) -> None:
    bot = rolling(phase, auto_promote=False)
    aborted = bot.step(spec("2.0", 2, auto_promote=False, abort=True))
    assert Route(BLUE, BLUE) in aborted.actions  # the preview Service back on the active colour
    assert ScaleDown(GREEN) in aborted.actions and ClearAnnotation(ABORT_ANNOTATION) in aborted.actions
    assert ("Warning", "AbortRequested") in events(aborted)
    assert ApplyRelease not in kinds(aborted)
    assert bot.status.phase is Phase.ABORTED and bot.status.active is BLUE and bot.status.preview is None
    assert conditions(bot.status) == {
        "Ready": (True, "RolloutAborted"),
        "Progressing": (False, "AbortRequested"),
        "Degraded": (True, "AbortRequested"),
    }
    last = bot.status.last
    assert last is not None and (last.result, last.reason, last.to_version) == (
        "Aborted",
        "AbortRequested",
        "2.0",
    )
    # Aborted is stable: the same spec does not start again ...
    assert bot.step(spec("2.0", 2, auto_promote=False), seconds=3600).actions == ()
    # ... a new one does.
    again = bot.step(spec("2.1", 3))
    assert ApplyRelease(GREEN) in again.actions and bot.status.phase is Phase.DEPLOYING


def test_a_failed_check_aborts_and_reports_degraded() -> None:
    bot = rolling(Phase.VERIFYING)
    bot.world.checks = FAILED
    aborted = bot.step(spec("2.0", 2))
    assert ("Warning", "PromotionCheckFailed") in events(aborted) and ScaleDown(GREEN) in aborted.actions
    assert bot.world.routes == {"active": BLUE, "preview": BLUE}
    assert conditions(bot.status)["Degraded"] == (True, "PromotionCheckFailed")
    assert bot.status.condition("Degraded").message == FAILED.message  # type: ignore[union-attr]


def test_a_failed_first_install_is_degraded_and_not_ready() -> None:
    bot = Bot()
    bot.step(spec())
    bot.world.available.add(BLUE)
    bot.step(spec())
    bot.world.checks = FAILED
    aborted = bot.step(spec())
    assert ScaleDown(BLUE) in aborted.actions and bot.status.active is None
    assert conditions(bot.status)["Ready"] == (False, "Aborted")
    assert conditions(bot.status)["Degraded"] == (True, "PromotionCheckFailed")
    bot.world.checks = None
    retry = bot.step(spec("1.1", 2))
    assert ApplyRelease(BLUE) in retry.actions and bot.status.phase is Phase.DEPLOYING


def test_the_promote_annotation_retries_an_aborted_rollout() -> None:
    bot = rolling(Phase.DEPLOYING)
    bot.step(spec("2.0", 2, abort=True))
    retry = bot.step(spec("2.0", 2, promote=True))
    assert ApplyRelease(GREEN) in retry.actions and ClearAnnotation(PROMOTE_ANNOTATION) in retry.actions
    assert bot.status.phase is Phase.DEPLOYING


def test_reverting_the_spec_after_an_abort_clears_degraded() -> None:
    bot = rolling(Phase.VERIFYING)
    bot.world.checks = FAILED
    bot.step(spec("2.0", 2))
    bot.world.checks = None
    recovered = bot.step(spec("1.0", 3))
    assert ApplyRelease not in kinds(recovered) and bot.status.phase is Phase.HEALTHY
    assert conditions(bot.status)["Degraded"] == (False, "AsExpected")
    assert all(c.observed_generation == 3 for c in bot.status.conditions)


@pytest.mark.parametrize("phase", [Phase.DEPLOYING, Phase.VERIFYING, Phase.PAUSED])
def test_each_waiting_phase_aborts_after_the_progress_deadline(phase: Phase) -> None:
    bot = rolling(phase, auto_promote=False)
    target = spec("2.0", 2, auto_promote=False)
    if phase is Phase.DEPLOYING:
        bot.world.available.clear()
    entered = bot.status.phase_since
    assert entered is not None
    assert bot.step(target, seconds=599).actions == ()  # within the deadline: waiting
    aborted = bot.step(target, seconds=2)
    assert ("Warning", "ProgressDeadlineExceeded") in events(aborted)
    assert bot.status.phase is Phase.ABORTED and bot.status.active is BLUE
    assert conditions(bot.status)["Degraded"] == (True, "ProgressDeadlineExceeded")
    assert str(phase) in bot.status.condition("Degraded").message  # type: ignore[union-attr]


def test_progress_at_the_deadline_wins_over_the_deadline() -> None:
    bot = rolling(Phase.DEPLOYING)
    bot.world.available.add(GREEN)
    bot.step(spec("2.0", 2), seconds=3600)
    assert bot.status.phase is Phase.VERIFYING


# --- retarget and rollback -----------------------------------------------------------------------


@pytest.mark.parametrize("phase", [Phase.DEPLOYING, Phase.VERIFYING, Phase.PAUSED])
def test_a_new_spec_mid_rollout_retargets_the_preview(phase: Phase) -> None:
    bot = rolling(phase, auto_promote=False)
    started = bot.status.current.started_at  # type: ignore[union-attr]
    retarget = bot.step(spec("3.0", 3, auto_promote=False))
    assert ApplyRelease(GREEN) in retarget.actions and ("Normal", "RolloutRetargeted") in events(retarget)
    assert Route not in kinds(retarget)  # the active colour never moved
    assert bot.status.phase is Phase.DEPLOYING and bot.status.preview is GREEN
    current = bot.status.current
    assert current is not None and (current.from_version, current.to_version) == ("1.0", "3.0")
    assert current.started_at == started and current.revision == "rev-3.0"
    assert bot.status.releases[GREEN].version == "3.0" and GREEN not in bot.world.available


def test_going_back_to_the_active_version_mid_rollout_cancels_it() -> None:
    bot = rolling(Phase.VERIFYING)
    cancelled = bot.step(spec("1.0", 3))
    assert ScaleDown(GREEN) in cancelled.actions and ApplyRelease not in kinds(cancelled)
    assert bot.status.phase is Phase.HEALTHY and bot.status.last.result == "Cancelled"  # type: ignore[union-attr]
    assert conditions(bot.status)["Degraded"] == (False, "AsExpected")


def test_abort_within_the_scale_down_window_is_an_instant_rollback() -> None:
    bot = rolling(Phase.SCALE_DOWN_DELAY)
    back = bot.step(spec("2.0", 2, abort=True), seconds=60)
    assert back.actions[0] == Route(BLUE, BLUE)  # traffic first, nothing to install: blue is warm
    assert ScaleDown(GREEN) in back.actions and ApplyRelease not in kinds(back)
    assert ("Warning", "RolledBack") in events(back)
    assert bot.status.active is BLUE and bot.status.phase is Phase.ABORTED
    last = bot.status.last
    assert last is not None and (last.result, last.reason, last.to_version) == (
        "RolledBack",
        "AbortRequested",
        "2.0",
    )
    assert conditions(bot.status)["Degraded"] == (True, "AbortRequested")
    assert bot.step(spec("2.0", 2), seconds=60).actions == ()


def test_reverting_the_version_within_the_window_switches_back_instantly() -> None:
    bot = rolling(Phase.SCALE_DOWN_DELAY)
    back = bot.step(spec("1.0", 3), seconds=60)
    assert back.actions[0] == Route(BLUE, BLUE) and ApplyRelease not in kinds(back)
    assert bot.status.phase is Phase.HEALTHY and bot.status.active is BLUE
    assert conditions(bot.status)["Degraded"] == (False, "AsExpected")


def test_after_the_window_going_back_is_a_full_rollout() -> None:
    bot = rolling(Phase.HEALTHY)
    back = bot.step(spec("1.0", 3))
    assert ApplyRelease(BLUE) in back.actions and bot.status.phase is Phase.DEPLOYING


def test_a_new_version_within_the_window_rolls_out_onto_the_warm_colour() -> None:
    bot = rolling(Phase.SCALE_DOWN_DELAY)
    nxt = bot.step(spec("3.0", 3), seconds=10)
    assert ApplyRelease(BLUE) in nxt.actions and bot.status.phase is Phase.DEPLOYING
    assert bot.status.current.from_version == "2.0"  # type: ignore[union-attr]


# --- draining the old colour before it scales down ----------------------------------------------


def test_the_old_colour_stays_up_until_its_queues_are_empty() -> None:
    bot = rolling(Phase.SCALE_DOWN_DELAY)
    target = spec("2.0", 2)
    delay_end = bot.status.phase_since + timedelta(seconds=300)  # type: ignore[operator]
    bot.world.backlog = STUCK
    waiting = bot.step(target, seconds=400)
    assert ScaleDown not in kinds(waiting) and BLUE in bot.world.running  # what blue accepted is not stranded
    assert bot.status.phase is Phase.DRAINING and bot.status.phase_since == delay_end
    assert conditions(bot.status)["Progressing"] == (False, "Draining")
    assert conditions(bot.status)["Ready"] == (True, "Serving")
    message = bot.status.condition("Progressing").message  # type: ignore[union-attr]
    assert "5 messages left (3 in its agent's inbox, 2 in its notifier's outbox)" in message
    assert "at the latest at 2026-11-29T10:15:06Z" in message  # promoted 10:00:06, + 300 s delay + 600 s
    assert delay_end == datetime(2026, 11, 29, 10, 5, 6, tzinfo=UTC)
    assert bot.step(target, seconds=30).actions == ()  # still holding messages: nothing to do
    bot.world.backlog = Backlog(inbox=0, outbox=1)
    assert bot.step(target, seconds=30).actions == ()
    assert "1 message left (0 in its agent's inbox, 1 in its notifier's outbox)" in (
        bot.status.condition("Progressing").message  # type: ignore[union-attr]
    )
    bot.world.backlog = Backlog()
    drained = bot.step(target, seconds=30)
    assert drained.actions == (ScaleDown(BLUE, keep_autocoder=True),) and BLUE not in bot.world.running
    assert bot.status.phase is Phase.HEALTHY and bot.status.releases[BLUE].left_behind is None
    assert conditions(bot.status)["Degraded"] == (False, "AsExpected")


def test_queues_that_cannot_be_read_are_not_taken_for_empty() -> None:
    bot = rolling(Phase.SCALE_DOWN_DELAY)
    bot.world.backlog = Backlog(error="http://acme-blue-agent.bots.svc:9101/metrics: connection refused")
    bot.step(spec("2.0", 2), seconds=400)
    assert bot.status.phase is Phase.DRAINING and BLUE in bot.world.running
    assert "could not be read (http://acme-blue-agent.bots.svc:9101/metrics: connection refused)" in (
        bot.status.condition("Progressing").message  # type: ignore[union-attr]
    )


def test_at_the_drain_deadline_the_old_colour_scales_down_anyway_and_degraded_says_what_it_left() -> None:
    bot = rolling(Phase.DRAINING)
    target = spec("2.0", 2)
    deadline = bot.status.phase_since + timedelta(seconds=600)  # type: ignore[operator]
    bot.now = deadline - timedelta(seconds=1)
    assert bot.step(target, seconds=1).actions == ()  # at the deadline: still draining
    cut = bot.step(target, seconds=1)
    assert ScaleDown(BLUE, keep_autocoder=True) in cut.actions and warnings(cut) == ["DrainDeadlineExceeded"]
    (event,) = [a for a in cut.actions if isinstance(a, Emit)]
    assert "blue was scaled down at its drain deadline with 5 messages left" in event.message
    assert bot.status.phase is Phase.HEALTHY and bot.status.releases[BLUE].left_behind == STUCK
    assert conditions(bot.status) == {
        "Ready": (True, "Serving"),
        "Progressing": (False, "UpToDate"),
        "Degraded": (True, "DrainDeadlineExceeded"),
    }
    degraded = bot.status.condition("Degraded")
    assert degraded is not None and "5 messages left (3 in its agent's inbox" in degraded.message
    assert "until blue runs again" in degraded.message
    assert Status.from_dict(json.loads(json.dumps(bot.status.to_dict()))) == bot.status
    assert bot.step(target, seconds=3600).actions == ()  # said once
    # Blue runs again with the next rollout: its pods take up its queues, Degraded clears.
    bot.world.backlog = Backlog()
    bot.step(spec("3.0", 3))
    assert bot.world.applied[-1] is BLUE and bot.status.releases[BLUE].left_behind is None
    assert conditions(bot.status)["Degraded"] == (False, "AsExpected")


def test_a_drain_seen_late_counts_its_deadline_from_the_end_of_the_delay() -> None:
    """An operator down through the delay and the drain deadline scales down at its first look."""
    bot = rolling(Phase.SCALE_DOWN_DELAY)
    bot.world.backlog = STUCK
    late = bot.step(spec("2.0", 2), seconds=300 + 601)
    assert ScaleDown(BLUE, keep_autocoder=True) in late.actions
    assert warnings(late) == ["DrainDeadlineExceeded"] and bot.status.phase is Phase.HEALTHY


def test_rollback_is_still_instant_while_the_old_colour_drains() -> None:
    bot = rolling(Phase.DRAINING)
    back = bot.step(spec("2.0", 2, abort=True))
    assert back.actions[0] == Route(BLUE, BLUE) and ApplyRelease not in kinds(back)
    assert bot.status.phase is Phase.ABORTED and bot.status.active is BLUE and BLUE in bot.world.running


# --- automatic rollback inside the scale-down window ----------------------------------------------


@pytest.mark.parametrize("phase", [Phase.SCALE_DOWN_DELAY, Phase.DRAINING])
def test_the_promoted_colour_going_unavailable_in_the_window_rolls_back_at_once(phase: Phase) -> None:
    bot = rolling(phase)
    bot.world.down.add(GREEN)  # green's pods crash after its promotion
    back = bot.step(spec("2.0", 2))
    assert back.actions[0] == Route(BLUE, BLUE)  # traffic first: blue is warm, nothing to install
    assert ScaleDown(GREEN) in back.actions and ApplyRelease not in kinds(back)
    assert warnings(back) == ["RolledBack"]  # Ready never went False: blue took over in this reconcile
    (event,) = [a for a in back.actions if isinstance(a, Emit)]
    assert "green (2.0) stopped serving within the scale-down window" in event.message
    assert "traffic back on blue (1.0)" in event.message
    assert bot.status.phase is Phase.ABORTED and bot.status.active is BLUE
    assert bot.world.routes == {"active": BLUE, "preview": BLUE}
    assert conditions(bot.status) == {
        "Ready": (True, "RolloutAborted"),
        "Progressing": (False, "PromotedUnavailable"),
        "Degraded": (True, "PromotedUnavailable"),
    }
    last = bot.status.last
    assert last is not None and (last.result, last.reason, last.to_version) == (
        "RolledBack",
        "PromotedUnavailable",
        "2.0",
    )
    assert bot.step(spec("2.0", 2), seconds=60).actions == ()  # Aborted is stable
    bot.world.down.clear()
    retry = bot.step(spec("2.0", 2, promote=True))  # fixed: try again
    assert ApplyRelease(GREEN) in retry.actions and bot.status.phase is Phase.DEPLOYING


def test_with_both_colours_down_nothing_is_rolled_back() -> None:
    bot = rolling(Phase.SCALE_DOWN_DELAY)
    bot.world.down |= {GREEN, BLUE}
    down = bot.step(spec("2.0", 2))
    assert Route not in kinds(down) and warnings(down) == ["ActiveUnavailable"]
    assert bot.status.phase is Phase.SCALE_DOWN_DELAY and bot.status.active is GREEN
    assert conditions(bot.status)["Ready"] == (False, "ActiveUnavailable")


def test_unread_deployments_roll_nothing_back() -> None:
    bot = rolling(Phase.SCALE_DOWN_DELAY)
    bot.world.read_error = "GET /apis/apps/v1/namespaces/bots/deployments: 503"
    assert Route not in kinds(bot.step(spec("2.0", 2)))
    assert bot.status.active is GREEN and conditions(bot.status)["Ready"][0] is None


def test_after_the_window_an_unavailable_active_colour_is_reported_not_rolled_back() -> None:
    bot = rolling(Phase.HEALTHY)
    bot.world.down.add(GREEN)
    down = bot.step(spec("2.0", 2))
    assert kinds(down) == [Emit] and bot.status.active is GREEN  # blue is cold: nothing instant to go to
    assert conditions(bot.status)["Ready"] == (False, "ActiveUnavailable")


# --- one reference AutoCoder per bot --------------------------------------------------------------


def test_the_first_colour_installed_hosts_the_bots_autocoder_for_good() -> None:
    bot = Bot()
    bot.step(spec())
    assert bot.status.autocoder is BLUE and bot.status.to_dict()["autocoderColour"] == "blue"
    bot = rolling(Phase.HEALTHY)  # green promoted, blue drained and scaled down
    assert bot.status.autocoder is BLUE
    assert bot.status.releases[BLUE].scaled_down
    # Back onto blue: green scales down whole (it has no AutoCoder to keep); blue still hosts.
    bot.step(spec("3.0", 3))
    bot.world.available.add(BLUE)
    bot.step(spec("3.0", 3))
    bot.world.checks = OK
    bot.step(spec("3.0", 3))
    bot.world.checks = None
    assert bot.status.active is BLUE and bot.status.autocoder is BLUE
    done = bot.step(spec("3.0", 3), seconds=400)
    assert ScaleDown(GREEN) in done.actions


def test_an_aborted_first_install_scales_its_autocoder_down_too() -> None:
    bot = Bot()
    bot.step(spec())
    aborted = bot.step(spec(abort=True))
    assert ScaleDown(BLUE) in aborted.actions  # nothing else uses it


def test_with_an_external_autocoder_no_colour_hosts_one() -> None:
    external = {"own_autocoder": False}
    bot = Bot()
    bot.step(spec(**external))
    assert bot.status.autocoder is None
    # A bot that moves to an external AutoCoder: the host keeps its own until it is installed
    # with the external one, and its AutoCoder is no longer kept when it scales down.
    bot = rolling(Phase.SCALE_DOWN_DELAY, **external)
    assert bot.status.autocoder is BLUE  # blue, still warm, runs its own
    done = bot.step(spec("2.0", 2, **external), seconds=400)
    assert ScaleDown(BLUE) in done.actions
    bot.step(spec("3.0", 3, **external))
    assert bot.world.applied[-1] is BLUE and bot.status.autocoder is None


def test_which_colour_hosts_the_autocoder_survives_a_restart() -> None:
    bot = rolling(Phase.DRAINING)
    assert Status.from_dict(json.loads(json.dumps(bot.status.to_dict()))).autocoder is BLUE


# --- idempotence, restarts, conditions -----------------------------------------------------------

PHASES = [
    Phase.DEPLOYING,
    Phase.VERIFYING,
    Phase.PAUSED,
    Phase.SCALE_DOWN_DELAY,
    Phase.DRAINING,
    Phase.HEALTHY,
    Phase.ABORTED,
]


def at(phase: Phase) -> tuple[Bot, Spec]:
    if phase is Phase.ABORTED:
        bot = rolling(Phase.DEPLOYING)
        bot.step(spec("2.0", 2, abort=True))
        return bot, spec("2.0", 2)
    manual = phase is Phase.PAUSED
    return rolling(phase, auto_promote=not manual), spec("2.0", 2, auto_promote=not manual)


@pytest.mark.parametrize("phase", PHASES)
def test_deciding_again_on_what_it_left_asks_for_nothing(phase: Phase) -> None:
    bot, target = at(phase)
    before = bot.status
    again = bot.step(target, seconds=1)
    assert again.actions == ()
    assert again.status == replace(before, conditions=again.status.conditions)
    assert again.status.conditions == before.conditions  # nothing changed, no transition time either


@pytest.mark.parametrize("phase", PHASES)
def test_a_restarted_operator_resumes_from_the_status_alone(phase: Phase) -> None:
    bot, target = at(phase)
    stored = json.loads(json.dumps(bot.status.to_dict()))  # what the API server keeps
    restored = Status.from_dict(stored)
    assert restored == bot.status
    # Whatever happens next, the restarted operator decides as the one that never stopped.
    bot.world.available.add(bot.status.preview or BLUE)
    bot.world.checks = OK
    later = bot.now + timedelta(seconds=400)
    assert decide(target, restored, bot.world.observed(), later) == decide(
        target, bot.status, bot.world.observed(), later
    )


def test_a_restart_before_the_status_was_written_repeats_only_idempotent_actions() -> None:
    bot = healthy()
    lost = bot.status
    first = bot.step(spec("2.0", 2))
    # The operator died after running the actions, before patching the status: same decision again.
    again = decide(spec("2.0", 2), lost, bot.world.observed(), bot.now)
    assert [a for a in again.actions if not isinstance(a, Route)] == list(
        a for a in first.actions if not isinstance(a, Route)
    )
    assert again.status == first.status


def test_condition_transition_times_move_only_when_their_status_does() -> None:
    bot = healthy()
    ready_since = bot.status.condition("Ready").last_transition_time  # type: ignore[union-attr]
    progressing_since = bot.status.condition("Progressing").last_transition_time  # type: ignore[union-attr]
    bot.step(spec("2.0", 2), seconds=30)
    ready = bot.status.condition("Ready")
    progressing = bot.status.condition("Progressing")
    assert ready is not None and progressing is not None
    assert ready.status and ready.reason == "RolloutInProgress" and ready.last_transition_time == ready_since
    assert progressing.status and progressing.last_transition_time == bot.now != progressing_since
    assert {c.observed_generation for c in bot.status.conditions} == {2}
    assert bot.status.observed_generation == 2


def test_config_only_changes_write_the_configmap_and_never_roll_out() -> None:
    bot = healthy()
    changed = bot.step(spec(config_hash="config-2"))
    assert changed.actions == (WriteConfigMap(),) and bot.status.phase is Phase.HEALTHY
    mid = rolling(Phase.VERIFYING)
    during = mid.step(spec("2.0", 2, config_hash="config-2"))
    assert during.actions == (WriteConfigMap(),) and mid.status.phase is Phase.VERIFYING


def test_promote_or_abort_with_nothing_to_act_on_is_cleared_and_ignored() -> None:
    bot = healthy()
    both = bot.step(spec(promote=True, abort=True))
    assert (
        ClearAnnotation(PROMOTE_ANNOTATION) in both.actions
        and ClearAnnotation(ABORT_ANNOTATION) in both.actions
    )
    assert ApplyRelease not in kinds(both) and bot.status.phase is Phase.HEALTHY


# --- which spec changes roll out (through values.rollout_spec) -----------------------------------

BASE = {
    "version": "1.0",
    "whitelist": ["+15551234567"],
    "rateLimits": {"perPhonePerMinute": 10, "globalPerMinute": 100},
    "model": {"name": "gpt-4o-mini", "baseUrl": "", "temperature": 0.2},
    "twilio": {"secretRef": {"name": "acme-twilio"}, "whatsappNumber": "whatsapp:+14155238886"},
    "redis": {"urlSecretRef": {"name": "acme-redis"}},
    "replicas": {"webhook": 2},
}


def with_(path: str, value: object) -> dict[str, object]:
    changed = json.loads(json.dumps(BASE))
    *parents, leaf = path.split(".")
    node = changed
    for key in parents:
        node = node[key]
    node[leaf] = value
    return changed


@pytest.mark.parametrize(
    ("path", "value", "rolls_out", "rewrites_config"),
    [
        ("whitelist", ["+15551234567", "+15557654321"], False, True),
        ("rateLimits.perPhonePerMinute", 5, False, True),
        ("rateLimits.globalPerMinute", 50, False, True),
        ("model.temperature", 0.7, False, True),
        ("version", "1.1", True, False),
        ("model.name", "gpt-4.1", True, False),
        ("model.baseUrl", "https://llm.example.org/v1", True, False),
        ("replicas.webhook", 4, False, False),
    ],
)
def test_which_spec_changes_roll_out(
    path: str, value: object, rolls_out: bool, rewrites_config: bool
) -> None:
    before = rollout_spec("acme", BASE, 1, {})
    after = rollout_spec("acme", with_(path, value), 2, {})
    assert (after.revision != before.revision) is rolls_out
    assert (after.config_hash != before.config_hash) is rewrites_config
    assert after.values_hash != before.values_hash or rewrites_config
    bot = healthy()
    bot.world.config_hash = before.config_hash
    bot.status = replace(
        bot.status,
        releases={
            BLUE: replace(bot.status.releases[BLUE], revision=before.revision, values_hash=before.values_hash)
        },
    )
    decision = bot.step(after)
    assert (bot.status.phase is Phase.DEPLOYING) is rolls_out
    assert (WriteConfigMap() in decision.actions) is rewrites_config


def test_annotations_become_the_specs_promote_and_abort() -> None:
    assert rollout_spec("acme", BASE, 1, {PROMOTE_ANNOTATION: "true"}).promote
    assert rollout_spec("acme", BASE, 1, {ABORT_ANNOTATION: ""}).abort
    assert not rollout_spec("acme", BASE, 1, {PROMOTE_ANNOTATION: "false"}).promote


# --- helm and the Kubernetes API failing ----------------------------------------------------------


def warnings(decision: Decision) -> list[str]:
    return [a.reason for a in decision.actions if isinstance(a, Emit) and a.type == "Warning"]


def counting(
    refuses: Callable[[Action], tuple[str, str, str] | None], calls: list[Action]
) -> Callable[[Action], tuple[str, str, str] | None]:
    def refuse(action: Action) -> tuple[str, str, str] | None:
        calls.append(action)
        return refuses(action)

    return refuse


def test_a_first_install_helm_keeps_refusing_retries_until_the_deadline_then_ends_degraded() -> None:
    calls: list[Action] = []
    bot = Bot()
    bot.world.refuses = counting(helm_refuses, calls)
    first = bot.step(spec())
    started = bot.now
    # The phase and its clock are recorded although its first action failed.
    assert bot.status.phase is Phase.DEPLOYING and bot.status.phase_since == started
    assert bot.status.releases[BLUE].pending and bot.world.applied == []
    assert warnings(first) == ["HelmFailed"]
    assert conditions(bot.status) == {
        "Ready": (False, "Installing"),
        "Progressing": (True, "HelmFailed"),
        "Degraded": (True, "HelmFailed"),
    }
    progressing = bot.status.condition("Progressing")
    assert progressing is not None and HELM_STUCK in progressing.message
    assert "helm upgrade --install acme-blue" in progressing.message
    assert "2026-11-29T10:10:01Z" in progressing.message  # when it aborts: started + 600 s
    # ... and survive a restart: all of it is in the status.
    assert Status.from_dict(json.loads(json.dumps(bot.status.to_dict()))) == bot.status

    retry = bot.step(spec(), seconds=300)
    assert calls.count(ApplyRelease(BLUE)) == 2 and warnings(retry) == []  # one Warning, not one a try
    assert bot.status.phase_since == started and bot.status.failure.since == started  # type: ignore[union-attr]

    aborted = bot.step(spec(), seconds=301)
    assert bot.status.phase is Phase.ABORTED and warnings(aborted) == ["ProgressDeadlineExceeded"]
    assert calls.count(ApplyRelease(BLUE)) == 2  # the deadline passed: no more tries
    assert conditions(bot.status) == {
        "Ready": (False, "Aborted"),
        "Progressing": (False, "ProgressDeadlineExceeded"),
        "Degraded": (True, "ProgressDeadlineExceeded"),
    }
    degraded = bot.status.condition("Degraded")
    assert degraded is not None and "Deploying for more than 600s" in degraded.message
    assert HELM_STUCK in degraded.message
    last = bot.status.last
    assert last is not None and (last.result, last.reason) == ("Aborted", "ProgressDeadlineExceeded")
    assert bot.step(spec(), seconds=3600).actions == ()  # Aborted is stable: helm is left alone

    # The way out once helm works: the promote annotation (or a new spec) tries again.
    bot.world.refuses = lambda action: None
    bot.step(spec(promote=True))
    assert bot.world.applied == [BLUE] and bot.status.failure is None
    assert conditions(bot.status)["Degraded"] == (False, "AsExpected")


@pytest.mark.parametrize("helm_recovers", [True, False])
def test_helm_failing_mid_rollout_keeps_traffic_on_the_old_colour(helm_recovers: bool) -> None:
    bot = healthy()
    bot.world.refuses = helm_refuses
    target = spec("2.0", 2)
    bot.step(target)
    started = bot.status.phase_since
    assert bot.status.phase is Phase.DEPLOYING and bot.status.releases[GREEN].pending
    assert bot.world.routes["active"] is BLUE
    assert conditions(bot.status)["Ready"] == (True, "RolloutInProgress")
    assert conditions(bot.status)["Progressing"] == (True, "HelmFailed")
    if helm_recovers:
        bot.world.refuses = lambda action: None
        bot.step(target, seconds=30)
        assert bot.world.applied[-1] is GREEN and not bot.status.releases[GREEN].pending
        assert bot.status.failure is None and bot.status.phase_since == started  # the same deadline
        assert conditions(bot.status)["Progressing"] == (True, "Deploying")
        assert conditions(bot.status)["Degraded"] == (False, "AsExpected")
        bot.world.available.add(GREEN)
        bot.step(target)
        bot.world.checks = OK
        bot.step(target)
        assert bot.status.phase is Phase.SCALE_DOWN_DELAY and bot.status.active is GREEN
    else:
        bot.step(target, seconds=601)
        assert bot.status.phase is Phase.ABORTED and bot.status.active is BLUE
        assert bot.world.routes == {"active": BLUE, "preview": BLUE}
        assert conditions(bot.status)["Degraded"] == (True, "ProgressDeadlineExceeded")
        assert conditions(bot.status)["Ready"] == (True, "RolloutAborted")


def test_a_refused_switch_is_retried_and_nothing_scales_down_before_traffic_moved() -> None:
    bot = rolling(Phase.VERIFYING)
    target = spec("2.0", 2)

    def api_refuses(action: Action) -> tuple[str, str, str] | None:
        if isinstance(action, Route):
            return "KubernetesApiFailed", "PATCH /api/v1/namespaces/bots/services/acme-active", FORBIDDEN
        return None

    bot.world.refuses = api_refuses
    bot.world.checks = OK
    bot.step(target)
    bot.world.checks = None
    assert bot.status.phase is Phase.SCALE_DOWN_DELAY and bot.world.routes["active"] is BLUE
    assert conditions(bot.status)["Degraded"] == (True, "KubernetesApiFailed")
    bot.step(target, seconds=400)  # past the window: blue would scale down, but traffic is still on it
    assert BLUE in bot.world.running and not bot.status.releases[BLUE].scaled_down
    bot.world.refuses = lambda action: None
    healed = bot.step(target)
    assert healed.actions[0] == Route(GREEN, GREEN) and ScaleDown(BLUE, keep_autocoder=True) in healed.actions
    assert bot.world.routes["active"] is GREEN and BLUE not in bot.world.running
    assert bot.status.phase is Phase.HEALTHY and bot.status.failure is None
    assert conditions(bot.status)["Degraded"] == (False, "AsExpected")


def test_a_failing_in_place_upgrade_is_degraded_and_retried_without_a_rollout() -> None:
    bot = healthy()
    bot.world.refuses = helm_refuses
    more = spec(values_hash="values-1.0-more-replicas")
    bot.step(more)
    assert bot.status.phase is Phase.HEALTHY and bot.status.releases[BLUE].pending
    assert conditions(bot.status)["Ready"] == (True, "Serving")
    assert conditions(bot.status)["Degraded"] == (True, "HelmFailed")
    bot.world.refuses = lambda action: None
    again = bot.step(more, seconds=10)
    assert again.actions == (ApplyRelease(BLUE),) and not bot.status.releases[BLUE].pending
    assert conditions(bot.status)["Degraded"] == (False, "AsExpected")


def test_failing_reads_are_reported_and_a_waiting_phase_still_has_its_deadline() -> None:
    bot = rolling(Phase.DEPLOYING)
    target = spec("2.0", 2)
    bot.world.available.add(GREEN)  # green is up, but the operator cannot see it
    bot.world.read_error = "GET /apis/apps/v1/namespaces/bots/deployments: 403 Forbidden: no list"
    bot.step(target)
    assert bot.status.phase is Phase.DEPLOYING
    assert conditions(bot.status) == {
        "Ready": (None, "ActiveNotObserved"),  # Unknown: not a guess either way
        "Progressing": (True, "KubernetesApiFailed"),
        "Degraded": (True, "KubernetesApiFailed"),
    }
    assert bot.status.to_dict()["conditions"][0]["status"] == "Unknown"
    bot.step(target, seconds=600)
    assert bot.status.phase is Phase.ABORTED and bot.status.active is BLUE
    degraded = bot.status.condition("Degraded")
    assert degraded is not None and degraded.reason == "ProgressDeadlineExceeded"
    assert "403 Forbidden: no list" in degraded.message
    bot.world.read_error = None
    bot.step(target)
    assert conditions(bot.status)["Ready"] == (True, "RolloutAborted")


# --- Ready is observed after promotion ------------------------------------------------------------


@pytest.mark.parametrize("phase", [Phase.HEALTHY, Phase.DEPLOYING, Phase.ABORTED])
def test_ready_follows_the_active_colours_deployments_without_a_rollout(phase: Phase) -> None:
    bot, target = at(phase)
    active = bot.status.active
    assert active is not None and conditions(bot.status)["Ready"][0] is True
    phase_since = bot.status.phase_since
    bot.world.down.add(active)
    down = bot.step(replace(target, generation=target.generation + 1), seconds=5)
    assert kinds(down) == [Emit] and warnings(down) == ["ActiveUnavailable"]  # nothing installed
    assert bot.status.phase is phase and bot.status.phase_since == phase_since
    ready = bot.status.condition("Ready")
    assert ready is not None and (ready.status, ready.reason) == (False, "ActiveUnavailable")
    assert ready.observed_generation == target.generation + 1 and ready.last_transition_time == bot.now
    assert active.value in ready.message
    assert bot.step(replace(target, generation=target.generation + 1)).actions == ()  # said once
    bot.world.down.clear()
    up = bot.step(replace(target, generation=target.generation + 1))
    assert [(a.type, a.reason) for a in up.actions if isinstance(a, Emit)] == [("Normal", "ActiveAvailable")]
    assert conditions(bot.status)["Ready"][0] is True
    assert bot.status.condition("Ready").last_transition_time == bot.now  # type: ignore[union-attr]
