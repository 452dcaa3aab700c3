"""A simulated month: predictions routed by the real StagePolicy, reviewed, counted and
judged by the real gates on a real SQLite file, with a controllable clock.

Every simulated hour each camera takes 40 stills of a world where a bear is present with
some probability; a model with a given recall and false-positive rate labels them; the
StagePolicy routes them (at the site's stage as last refreshed); reviewers decide every
queued item by the truth; hourly counts go to the store. At the end of each day the
rollout evaluates the site (automatic rollback as configured) and promotes it when every
gate passes. The world is the only thing a scenario changes.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pytest
from sqlmodel import select

from monitor.store import session_scope, sync_sites_and_cameras, upsert_increments
from monitor.store.tables import LabelHour, ReviewItem, utc_hour
from monitor.types import Prediction
from rollout.policy import StagePolicy
from rollout.promote import GatesNotPassed, add_window, evaluate, promote
from rollout.stages import Stage
from rollout.tables import RolloutEvent

from rollout_helpers import START, FakeClock

pytestmark = pytest.mark.slow

STILLS_PER_HOUR = 40
CAMERAS = ("cam-n1", "cam-n2")
SIM_GATES = {
    "min_reviewed": 200, "min_days_in_stage": 7, "min_decided_positives": 30, "min_decided_negatives": 100,
    "miss_rate_max": 0.02,
}
WINDOW_CRON = "0 */4 * * *"  # limited stage: the model may alert for an hour every 4 hours


def _prediction(label: str, confidence: float) -> Prediction:
    other = "none" if label != "none" else "grizzly"
    return Prediction(label, confidence, {label: confidence, other: 1 - confidence}, "sim-model@1")


BEAR_SEEN = _prediction("grizzly", 0.9)
BEAR_MISSED = _prediction("none", 0.7)
FALSE_ALARM = _prediction("black", 0.85)
EMPTY = _prediction("none", 0.95)
EMPTY_DOUBTFUL = _prediction("none", 0.55)


@dataclass(frozen=True)
class World:
    """How often a bear is there, and how well the model does."""

    bear_rate: float = 0.05
    recall: float = 0.95
    false_positive_rate: float = 0.0005
    out_of_domain_rate: float = 0.02


NORMAL = World()
# Two and a half times the bears (the model is as good as before): the alert rate more
# than doubles. An exactly doubled rate sits on the band's edge and could only block.
MORE_BEARS = World(bear_rate=0.125)
# Fewer real bears, many false alarms: the same alert rate, but precision about 0.59.
FALSE_ALARMS = World(bear_rate=0.03, false_positive_rate=0.0195)


@dataclass
class Run:
    """What happened in one simulation."""

    stage_by_day: list[Stage] = field(default_factory=list)
    alerts: Counter = field(default_factory=Counter)  # (stage, hour of day) -> alerts
    routed: Counter = field(default_factory=Counter)  # (stage, reason) -> stills
    refused: list[GatesNotPassed] = field(default_factory=list)
    events: list[RolloutEvent] = field(default_factory=list)


def simulate(
    engine, make_ctx, *, days: int, world: Callable[[Stage, int], World], auto_rollback: bool, seed: int = 1
) -> Run:
    clock = FakeClock(START)
    ctx = make_ctx(gates=SIM_GATES, auto_rollback={"enabled": auto_rollback, "consecutive_failures": 3})
    ctx = type(ctx)(config=ctx.config, positivity=ctx.positivity, clock=clock, sites=ctx.sites, model_id=ctx.model_id)
    rng = random.Random(seed)
    policy = StagePolicy(ctx.config.routing, rng=random.Random(seed + 1), clock=clock)
    run = Run()
    windows_added = False
    for day in range(days):
        stage = policy.stage_of("north")
        run.stage_by_day.append(stage)
        today = world(stage, day)
        items: list[ReviewItem] = []
        counts: list[dict] = []
        for hour in range(24):
            hour_start = START + timedelta(days=day, hours=hour)
            for camera_id in CAMERAS:
                threshold = ctx.positivity.thresholds.get(camera_id, ctx.positivity.default_threshold)
                for still in range(STILLS_PER_HOUR):
                    captured_at = hour_start + timedelta(seconds=still * 3600 / STILLS_PER_HOUR)
                    clock.set(captured_at)
                    bear = rng.random() < today.bear_rate
                    if bear:
                        prediction = BEAR_SEEN if rng.random() < today.recall else BEAR_MISSED
                    elif rng.random() < today.false_positive_rate:
                        prediction = FALSE_ALARM
                    else:
                        prediction = EMPTY_DOUBTFUL if rng.random() < 0.05 else EMPTY
                    positive = prediction.label in ctx.positivity.alert_labels and prediction.confidence >= threshold
                    route = policy.route(
                        site_id="north", camera_id=camera_id, prediction=prediction, positive=positive,
                        out_of_domain=rng.random() < today.out_of_domain_rate,
                    )
                    counts.append({"camera_id": camera_id, "hour": utc_hour(captured_at), "label": prediction.label,
                                   "predictions": 1, "positives": int(positive)})
                    if route.alert:
                        run.alerts[(stage, hour)] += 1
                    if route.review_reason is None:
                        continue
                    run.routed[(stage, route.review_reason.value)] += 1
                    items.append(_reviewed(camera_id, captured_at, prediction, route.review_reason.value, bear))
        with session_scope(engine) as session:
            session.add_all(items)
            upsert_increments(LabelHour, counts, keys=("camera_id", "hour", "label"), session=session)
        # End of the day: evaluate (maybe roll back), promote when every gate passes.
        clock.set(START + timedelta(days=day + 1))
        with session_scope(engine) as session:
            evaluation = evaluate("north", session=session, ctx=ctx)
        if evaluation.report.passed and evaluation.report.stage is not Stage.FULL:
            with session_scope(engine) as session:
                try:
                    promote("north", session=session, ctx=ctx, actor="sim")
                except GatesNotPassed as refused:  # pragma: no cover - the report just passed
                    run.refused.append(refused)
        with session_scope(engine) as session:
            from rollout import store

            if store.get_state("north", session=session).stage == Stage.LIMITED.value and not windows_added:
                add_window("north", session=session, ctx=ctx, actor="sim", cron=WINDOW_CRON,
                           until=START + timedelta(days=90), duration=timedelta(hours=1))
                windows_added = True
        # The refresher's job, once a simulated day (stage changes only happen here).
        policy.refresh(engine, horizon=timedelta(days=1, minutes=1))
    with session_scope(engine) as session:
        run.events = list(session.exec(select(RolloutEvent).order_by(RolloutEvent.id)))
    return run


def _reviewed(camera_id: str, captured_at: datetime, prediction: Prediction, reason: str, bear: bool) -> ReviewItem:
    """A queued still, decided by a reviewer who sees the truth."""
    if prediction.label == "none":
        status, review_label = ("relabelled", "grizzly") if bear else ("approved", None)
    else:
        status, review_label = ("approved", None) if bear else ("rejected", None)
    return ReviewItem(
        site_id="north", camera_id=camera_id, captured_at=captured_at, label=prediction.label,
        confidence=prediction.confidence, probabilities=dict(prediction.probabilities), model_id=prediction.model_id,
        reason=reason, status=status, review_label=review_label, reviewed_at=captured_at,
        snapshot=f"sim/{uuid.uuid4().hex}.jpg",
    )


@pytest.fixture
def sim_engine(selected_engine, monitor_config):
    with session_scope(selected_engine) as session:
        sync_sites_and_cameras(monitor_config, session=session)
    return selected_engine


def transitions(run: Run) -> list[tuple[str, str, str]]:
    return [(e.action, e.from_stage, e.to_stage) for e in run.events if e.action != "window_added"]


def gate_verdicts(event: RolloutEvent) -> dict[str, str]:
    return {g["name"]: g["verdict"] for g in event.evidence["gates"]}


# ---------------------------------------------------------------- scenarios


def test_a_good_month_takes_the_site_from_manual_to_full(sim_engine, make_ctx):
    run = simulate(sim_engine, make_ctx, days=30, world=lambda stage, day: NORMAL, auto_rollback=True)
    assert transitions(run) == [
        ("promote", "manual", "limited"), ("promote", "limited", "expansion"), ("promote", "expansion", "full"),
    ]
    promotions = [e for e in run.events if e.action == "promote"]
    assert all(not e.forced and e.evidence["verdict"] == "PASS" and e.actor == "sim" for e in promotions)
    # One step per 7-day minimum: promoted at the end of days 7, 14 and 21.
    assert [e.at for e in promotions] == [START + timedelta(days=d) for d in (7, 14, 21)]
    assert run.stage_by_day.count(Stage.FULL) == 9
    # Manual never alerts; limited only inside its windows; later stages alert on positives.
    assert not any(count for (stage, _), count in run.alerts.items() if stage is Stage.MANUAL)
    limited_hours = {hour for (stage, hour), count in run.alerts.items() if stage is Stage.LIMITED and count}
    assert limited_hours and limited_hours <= {0, 4, 8, 12, 16, 20}
    assert sum(c for (stage, _), c in run.alerts.items() if stage is Stage.FULL) > 100
    # Each stage reviews what it should.
    assert run.routed[(Stage.MANUAL, "positive")] > 0 and run.routed[(Stage.MANUAL, "audit")] == 0
    assert run.routed[(Stage.EXPANSION, "out_of_domain")] > 0
    assert run.routed[(Stage.FULL, "audit")] > 0 and run.routed[(Stage.FULL, "positive")] == 0
    # The evidence kept with each promotion holds its numbers.
    rate = next(g for g in promotions[2].evidence["gates"] if g["name"] == "alert_rate")
    assert 0.5 <= rate["numbers"]["lower"] <= rate["numbers"]["ratio"] <= rate["numbers"]["upper"] <= 2.0


def _from_expansion(anomaly: World) -> Callable[[Stage, int], World]:
    """Normal until the site first reaches expansion, then ``anomaly`` for good."""
    started: list[int] = []

    def world(stage: Stage, day: int) -> World:
        if stage is Stage.EXPANSION and not started:
            started.append(day)
        return anomaly if started else NORMAL

    return world


@pytest.mark.parametrize(
    "anomaly,failing_gate",
    [(MORE_BEARS, "alert_rate"), (FALSE_ALARMS, "precision")],
    ids=["alert-rate-more-than-doubled", "precision-drop"],
)
def test_an_anomaly_blocks_promotion(sim_engine, make_ctx, anomaly, failing_gate):
    run = simulate(sim_engine, make_ctx, days=23, world=_from_expansion(anomaly), auto_rollback=False)
    assert transitions(run) == [("promote", "manual", "limited"), ("promote", "limited", "expansion")]
    assert run.stage_by_day[-1] is Stage.EXPANSION  # nine days at expansion, 7 needed: held back by the gate
    ctx = make_ctx(gates=SIM_GATES)
    ctx = type(ctx)(config=ctx.config, positivity=ctx.positivity, clock=lambda: START + timedelta(days=23),
                    sites=ctx.sites)
    with session_scope(sim_engine) as session, pytest.raises(GatesNotPassed) as refused:
        promote("north", session=session, ctx=ctx, actor="ranger")
    assert [(r.name, r.verdict.value) for r in refused.value.report.not_passed()] == [(failing_gate, "FAIL")]


@pytest.mark.parametrize(
    "anomaly,failing_gate",
    [(MORE_BEARS, "alert_rate"), (FALSE_ALARMS, "precision")],
    ids=["alert-rate-more-than-doubled", "precision-drop"],
)
def test_an_anomaly_rolls_the_site_back_with_auto_rollback_on(sim_engine, make_ctx, anomaly, failing_gate):
    run = simulate(sim_engine, make_ctx, days=19, world=_from_expansion(anomaly), auto_rollback=True)
    moves = transitions(run)
    assert moves[:3] == [
        ("promote", "manual", "limited"), ("promote", "limited", "expansion"),
        ("auto_rollback", "expansion", "limited"),
    ]
    assert Stage.FULL not in run.stage_by_day
    rollback = next(e for e in run.events if e.action == "auto_rollback")
    assert rollback.actor == "auto-rollback" and "3 consecutive evaluations" in rollback.reason
    assert gate_verdicts(rollback)[failing_gate] == "FAIL"
    # Three failing daily evaluations after the promotion at the end of day 14.
    promoted = next(e.at for e in run.events if e.to_stage == "expansion")
    assert rollback.at - promoted <= timedelta(days=4)
