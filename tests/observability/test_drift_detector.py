"""The drift detector: its statistics against SciPy, its judgement on made-up counts, and
the whole detector on a real database: flags open with a start, close with an end, fail
the rollout's drift gate, reach /metrics; the pipeline counts episodes and OOD stills."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
import scipy.stats as scipy_stats  # the reference; installed with fastai (a runtime dependency)
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from sqlmodel import select

from monitor.config import MonitorConfig
from monitor.drift import (
    DriftDetector,
    class_mix_change,
    judge,
    population_stability_index,
    rate_change,
    window_label,
)
from monitor.metrics import Metrics
from monitor.observe_config import DriftConfig
from monitor.store import create_engine_for, init_schema, session_scope, sync_sites_and_cameras, upsert_increments
from monitor.store.observe import Counts, drift_flag_provider, open_flags, scope_counts
from monitor.store.tables import CameraHour, ConfidenceHour, DriftFlag, LabelHour, utc_hour
from rollout.gates import Positivity, Verdict
from rollout.promote import RolloutContext, gate_report, promote
from monitor.stats import chi2_sf
from rollout.store import init_rollout_schema, stage_periods
from rollout.stages import Stage


NOW = datetime(2026, 7, 1, 12, 30, tzinfo=timezone.utc)
RATE = dict(alpha=0.0003, ratio_up=1.5, ratio_down=0.67, min_expected=5, min_baseline=20)


# ---------------------------------------------------------------- statistics


@pytest.mark.parametrize(("events", "exposure", "base", "base_exposure"),
                         [(60, 3.0, 280, 28.0), (12, 3.0, 280, 28.0), (30, 3.0, 280, 28.0), (0, 7.0, 30, 28.0)])
def test_rate_change_p_values_are_the_exact_conditional_binomial_tails(events, exposure, base, base_exposure):
    change = rate_change(events, exposure, base, base_exposure, **(RATE | {"ratio_up": 0.0, "ratio_down": 99.0}))
    share = exposure / (exposure + base_exposure)
    assert change.p_up == pytest.approx(scipy_stats.binom.sf(events - 1, events + base, share), rel=1e-9)
    assert change.p_down == pytest.approx(scipy_stats.binom.cdf(events, events + base, share), rel=1e-9)


def test_rate_change_flags_doubling_and_halving_only_when_significant_and_large_enough():
    assert rate_change(60, 3, 280, 28, **RATE).direction == "up"  # 2x, 60 vs 30 expected
    assert rate_change(8, 3, 280, 28, **RATE).direction == "down"  # 0.27x
    assert rate_change(36, 3, 280, 28, **RATE).direction is None  # 1.2x: not a change worth a flag
    # 2x, but one day of a sparse camera: not significant, so no flag
    assert rate_change(2, 1, 28, 28, **RATE | {"min_expected": 1}).direction is None


@pytest.mark.parametrize(("events", "exposure", "base", "base_exposure", "why"), [
    (40, 3, 10, 28, "baseline too small"),
    (9, 0.3, 280, 28, "window expects too few"),
    (5, 0, 280, 28, "no exposure"),
])
def test_rate_change_does_not_test_sparse_data(events, exposure, base, base_exposure, why):
    change = rate_change(events, exposure, base, base_exposure, **RATE)
    assert not change.tested and change.direction is None, why


def test_rate_change_refuses_negative_counts():
    with pytest.raises(ValueError):
        rate_change(-1, 1, 1, 1, **RATE)


def test_psi_is_zero_for_equal_histograms_and_large_for_a_shift():
    base = [5, 5, 10, 20, 40, 80, 160, 300, 500, 880]
    assert population_stability_index(base, [x * 3 for x in base]) == pytest.approx(0.0, abs=1e-12)
    shifted = list(reversed(base))
    assert population_stability_index(base, shifted) > 1.0
    assert 0.0 < population_stability_index(base, [x + 5 for x in base]) < 0.1
    with pytest.raises(ValueError):
        population_stability_index(base, [0] * 10)


def test_class_mix_chi_square_matches_scipy_and_distance_is_total_variation():
    base = {"none": 9000, "grizzly": 600, "black": 400}
    now = {"none": 2500, "grizzly": 300, "black": 200}
    change = class_mix_change(base, now)
    expected = scipy_stats.chi2_contingency(np.array([[9000, 600, 400], [2500, 300, 200]]), correction=False)
    assert change.statistic == pytest.approx(expected.statistic)
    assert change.dof == 2 and change.p_value == pytest.approx(expected.pvalue, rel=1e-6)
    assert change.distance == pytest.approx(0.5 * (abs(0.9 - 2500 / 3000) + abs(0.06 - 0.1) + abs(0.04 - 200 / 3000)))
    same = class_mix_change(base, {k: v // 10 for k, v in base.items()})
    assert same.p_value > 0.5 and same.distance < 0.01


def test_class_mix_pools_rare_labels_into_one_cell():
    change = class_mix_change({"none": 1000, "sloth": 1, "panda": 2}, {"none": 1000, "polar": 1})
    assert change.dof == 1  # none vs (other)


@pytest.mark.parametrize(("statistic", "dof"), [(0.5, 1), (3.84, 1), (12.0, 4), (80.0, 9), (300.0, 40)])
def test_chi2_sf_pure_and_scipy_agree(statistic, dof):
    assert chi2_sf(statistic, dof, pure=True) == pytest.approx(scipy_stats.chi2.sf(statistic, dof), rel=1e-9)
    assert chi2_sf(statistic, dof) == pytest.approx(scipy_stats.chi2.sf(statistic, dof), rel=1e-9)


def test_window_labels():
    assert [window_label(s) for s in (86400, 3 * 86400, 6 * 3600, 5400, 45)] == ["1d", "3d", "6h", "90m", "45s"]


# ---------------------------------------------------------------- judging counts


def counts(days: float, *, episodes_per_day: float, ood_share: float = 0.0, grizzly_share: float = 0.01,
           confident: bool = True) -> Counts:
    frames = int(days * 17280)  # a still every 5 s
    grizzly = int(frames * grizzly_share)
    confidence = [0] * 10
    if confident:
        confidence[9], confidence[8] = int(frames * 0.9), frames - int(frames * 0.9)
    else:
        confidence[5], confidence[6] = frames // 2, frames - frames // 2
    return Counts(frames=frames, episodes=round(days * episodes_per_day), out_of_domain=int(frames * ood_share),
                  labels={"none": frames - grizzly, "grizzly": grizzly}, confidence=confidence)


def windows(**kwargs) -> list[tuple[str, Counts]]:
    return [(f"{d}d", counts(d, **kwargs)) for d in (1, 3, 7, 14)]


def test_judge_finds_nothing_when_nothing_changed():
    result = judge("north", "gate", windows(episodes_per_day=10), counts(28, episodes_per_day=10), DriftConfig())
    assert {k for k, f in result.findings.items() if f.active} == set()
    assert set(result.findings) == {"rate_up", "rate_down", "confidence", "class_mix", "out_of_domain"}
    assert result.rate_ratios["3d"] == pytest.approx(1.0)


@pytest.mark.parametrize(("current", "kind"), [
    ({"episodes_per_day": 20}, "rate_up"),
    ({"episodes_per_day": 3}, "rate_down"),
    ({"episodes_per_day": 10, "confident": False}, "confidence"),
    ({"episodes_per_day": 10, "grizzly_share": 0.3}, "class_mix"),
    ({"episodes_per_day": 10, "ood_share": 0.4}, "out_of_domain"),
])
def test_judge_flags_each_kind_of_drift(current, kind):
    result = judge("north", "gate", windows(**current), counts(28, episodes_per_day=10, ood_share=0.05),
                   DriftConfig())
    active = {k for k, f in result.findings.items() if f.active}
    assert kind in active, result.findings
    assert result.findings[kind].detail


def test_judge_says_nothing_without_a_baseline():
    result = judge("north", "gate", windows(episodes_per_day=50), Counts(), DriftConfig())
    assert result.findings == {} and result.baseline_rate is None


# ---------------------------------------------------------------- the detector on a real database


@pytest.fixture
def store(tmp_path, database_url):
    config = MonitorConfig(
        database=database_url, snapshots=tmp_path / "snapshots",
        sites=[{"id": "north", "cameras": [{"id": "gate", "url": "rtsp://10.0.0.5/a"},
                                           {"id": "trail", "url": "rtsp://10.0.0.6/b"}]},
               {"id": "south", "cameras": [{"id": "lake", "url": "rtsp://10.0.0.7/c"}]}],
    )
    engine = create_engine_for(database_url)
    init_schema(engine)
    init_rollout_schema(engine)
    with session_scope(engine) as session:
        sync_sites_and_cameras(config, session=session)
    yield engine, config
    engine.dispose()


def seed(engine, camera: str, start: datetime, hours: int, *, episodes_per_day: float, seed_: int = 0,
         ood_share: float = 0.0) -> None:
    """Hourly counts as the pipeline writes them: a still every 5 s, Poisson episodes."""
    rng = np.random.default_rng(seed_)
    camera_rows, label_rows, confidence_rows = [], [], []
    for h in range(hours):
        hour = utc_hour(start + timedelta(hours=h))
        episodes = int(rng.poisson(episodes_per_day / 24))
        camera_rows.append({"camera_id": camera, "hour": hour, "frames": 720, "alert_episodes": episodes,
                            "out_of_domain": int(720 * ood_share)})
        label_rows += [{"camera_id": camera, "hour": hour, "label": "none", "predictions": 720 - 3 * episodes,
                        "positives": 0},
                       {"camera_id": camera, "hour": hour, "label": "grizzly", "predictions": 3 * episodes,
                        "positives": 3 * episodes}]
        confidence_rows += [{"camera_id": camera, "hour": hour, "bucket": 9, "predictions": 650},
                            {"camera_id": camera, "hour": hour, "bucket": 7, "predictions": 70}]
    with session_scope(engine) as session:
        upsert_increments(CameraHour, camera_rows, keys=("camera_id", "hour"), session=session)
        upsert_increments(LabelHour, label_rows, keys=("camera_id", "hour", "label"), session=session)
        upsert_increments(ConfidenceHour, confidence_rows, keys=("camera_id", "hour", "bucket"), session=session)
        session.commit()


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def detector(engine, clock, **settings) -> DriftDetector:
    return DriftDetector(engine, DriftConfig(interval="1h", clear_after=3, **settings),
                         {"north": ["gate", "trail"], "south": ["lake"]}, clock=clock)


def test_scope_counts_sum_hours_inside_the_periods(store):
    engine, _ = store
    seed(engine, "gate", NOW - timedelta(days=2), 48, episodes_per_day=24)
    with session_scope(engine) as session:
        everything = scope_counts(["gate"], [(None, None)], session=session)
        last_day = scope_counts(["gate"], [(NOW - timedelta(days=1), None)], session=session)
        nothing = scope_counts(["lake"], [(None, None)], session=session)
    # hours *starting* inside the window: at 12:30, the last day is 13:00 yesterday onwards
    assert everything.frames == 48 * 720 and last_day.frames == 23 * 720
    assert sum(everything.confidence) == everything.frames == sum(everything.labels.values())
    assert nothing.frames == 0 and nothing.labels == {}


def test_a_doubled_alert_rate_opens_a_flag_that_closes_after_the_rate_returns(store):
    engine, _ = store
    start = NOW - timedelta(days=42)
    seed(engine, "gate", start, 38 * 24, episodes_per_day=10, seed_=1)  # 38 normal days
    seed(engine, "gate", start + timedelta(days=38), 4 * 24, episodes_per_day=30, seed_=2)  # then 3x
    for camera, seed_ in (("trail", 3), ("lake", 4)):
        seed(engine, camera, start, 42 * 24, episodes_per_day=10, seed_=seed_)
    clock = Clock(NOW)
    drift = detector(engine, clock)
    drift.evaluate_all()
    with session_scope(engine) as session:
        flags = open_flags(session=session)
    gate_flags = [(f.site_id, f.camera_id, f.kind) for f in flags]
    assert ("north", "gate", "rate_up") in gate_flags
    assert not any(camera in ("trail", "lake") for _, camera, _ in gate_flags)
    flag = next(f for f in flags if f.camera_id == "gate" and f.kind == "rate_up")
    assert flag.opened_at == NOW and flag.closed_at is None and flag.statistic > 2 and "episodes" in flag.detail

    # The rollout's drift gate fails for north and names the flag; south passes.
    ctx = RolloutContext(positivity=Positivity(), clock=clock, drift_flags=drift_flag_provider(engine))
    with session_scope(engine) as session:
        north = {r.name: r for r in gate_report("north", session=session, ctx=ctx).results}
        south = {r.name: r for r in gate_report("south", session=session, ctx=ctx).results}
    assert north["drift"].verdict is Verdict.FAIL and "rate_up on camera gate" in north["drift"].detail
    assert south["drift"].verdict is Verdict.PASS

    # /metrics: the flag is 1, the other kinds 0, and the ratio is there per window.
    metrics = Metrics(CollectorRegistry())
    metrics.watch_drift(drift.numbers)
    text = generate_latest(metrics.registry).decode()
    assert 'monitor_drift_flag{camera="gate",kind="rate_up",site="north"} 1.0' in text
    assert 'monitor_drift_flag{camera="lake",kind="rate_up",site="south"} 0.0' in text
    assert 'monitor_drift_rate_ratio{camera="gate",site="north",window="3d"}' in text

    # The rate goes back to normal for a week: the short windows stop seeing it, but the
    # flag stays open until clear_after (3) evaluations passed without the condition.
    seed(engine, "gate", NOW, 7 * 24, episodes_per_day=10, seed_=5)
    for camera, seed_ in (("trail", 6), ("lake", 7)):
        seed(engine, camera, NOW, 7 * 24, episodes_per_day=10, seed_=seed_)
    closed_at = None
    for hours in range(1, 24 * 7):
        clock.now = NOW + timedelta(hours=hours)
        drift.evaluate("north", "gate")
        with session_scope(engine) as session:
            row = session.exec(select(DriftFlag).where(DriftFlag.id == flag.id)).one()
        if row.closed_at is not None:
            closed_at = row.closed_at
            break
    assert closed_at is not None, "the flag never closed"
    assert row.last_seen_at <= closed_at - timedelta(hours=3)
    with session_scope(engine) as session:
        assert not [f for f in open_flags(session=session, site_id="north") if f.camera_id == "gate"]
    # the longer windows kept seeing the 4 days of 3x for days after it ended
    assert closed_at - NOW > timedelta(days=2)


def test_the_baseline_is_the_manual_stage_only(store):
    """Counts from after the site left manual are not baseline: a rate that doubled at
    promotion and stayed doubled is still flagged weeks later."""
    engine, config = store
    start = NOW - timedelta(days=60)
    promoted = start + timedelta(days=30)
    seed(engine, "lake", start, 30 * 24, episodes_per_day=10, seed_=8)
    seed(engine, "lake", promoted, 30 * 24, episodes_per_day=25, seed_=9)
    clock = Clock(promoted)
    ctx = RolloutContext.from_config(config, clock=clock)
    with session_scope(engine) as session:
        promote("south", session=session, ctx=ctx, actor="test", force=True, reason="test")

    def manual(session, site_id):
        return [(p.start, p.end) for p in stage_periods(site_id, session=session) if p.stage is Stage.MANUAL]

    clock.now = NOW
    with_manual = DriftDetector(engine, DriftConfig(), {"south": ["lake"]}, baseline_periods=manual, clock=clock)
    everything = DriftDetector(engine, DriftConfig(), {"south": ["lake"]}, clock=clock)
    assert with_manual.evaluate("south", "lake").findings["rate_up"].active
    baseline_all = everything.evaluate("south", "lake").baseline
    assert baseline_all.frames > with_manual.evaluate("south", "lake").baseline.frames


def test_a_configured_reference_window_is_the_baseline(store):
    engine, _ = store
    seed(engine, "lake", NOW - timedelta(days=30), 30 * 24, episodes_per_day=10, seed_=10)
    reference = {"start": (NOW - timedelta(days=30)).isoformat(), "end": (NOW - timedelta(days=20)).isoformat()}
    drift = DriftDetector(engine, DriftConfig(reference=reference), {"south": ["lake"]}, clock=Clock(NOW))
    assert drift.evaluate("south", "lake").baseline.frames == 10 * 24 * 720


def test_a_site_with_one_camera_is_not_evaluated_twice(store):
    engine, _ = store
    scopes = detector(engine, Clock(NOW)).scopes()
    assert ("south", None) not in scopes and ("north", None) in scopes and len(scopes) == 4


@pytest.mark.parametrize(("settings", "message"), [
    ({"windows": ["30m"]}, "at least 1h"),
    ({"windows": ["1d", "1d"]}, "twice"),
    ({"windows": []}, "at least 1 item"),
    ({"rate_alpha": 0.7}, "less than 0.5"),
    ({"reference": {"start": "2026-05-01T00:00:00Z", "end": "2026-04-01T00:00:00Z"}}, "end must be after start"),
    ({"reference": {"start": "2026-05-01T00:00:00", "end": "2026-06-01T00:00:00"}}, "time zone"),
])
def test_bad_drift_config_is_refused_with_the_reason(settings, message):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        DriftConfig(**settings)


# ---------------------------------------------------------------- what the pipeline records


def test_pipeline_counts_episodes_ood_and_alerts_and_marks_review_items(store, tmp_path):
    from monitor.model.base import Classifier
    from monitor.observe_config import OodConfig
    from monitor.ood import OodDetector
    from monitor.pipeline import CameraRouting, Pipeline
    from monitor.store import SnapshotStore, record_predictions
    from monitor.store.tables import ReviewItem
    from monitor.types import Frame, Prediction
    from rollout.policy import ManualPolicy

    engine, _ = store
    snapshots = SnapshotStore(tmp_path / "snaps")

    class Scripted(Classifier):
        labels = ("none", "grizzly")

        def __init__(self, script):
            self.script = list(script)

        def predict_batch(self, images):
            return [Prediction.from_probabilities(self.script.pop(0), "scripted") for _ in images]

    bear, empty = {"grizzly": 0.9, "none": 0.1}, {"none": 0.97, "grizzly": 0.03}
    # positives at 0, 30 s (same episode), 200 s (new episode); then an empty grey frame
    script = [bear, bear, empty, bear, empty]
    seconds = [0, 30, 100, 200, 300]
    registry = CollectorRegistry()
    metrics = Metrics(registry)

    def persist(outcomes):
        with session_scope(engine) as session:
            record_predictions(outcomes, session=session, snapshots=snapshots)

    pipeline = Pipeline(
        classifier=Scripted(script), policy=ManualPolicy(0.0), persist=persist,
        cameras={"gate": CameraRouting("north", 0.5)}, alert_labels=["grizzly"], metrics=metrics,
        ood=OodDetector(OodConfig(signals=["grayscale"])), stage_of=lambda site: "manual",
    )
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 255, (90, 160, 3), dtype=np.uint8)
    grey = np.repeat(rng.integers(0, 255, (90, 160, 1), dtype=np.uint8), 3, axis=2)
    frames = [Frame("gate", grey if s == 300 else colour, NOW + timedelta(seconds=s)) for s in seconds]
    outcomes = pipeline.process(frames)
    assert [o.alert_episode for o in outcomes] == [True, False, False, True, False]
    assert [o.ood_reasons for o in outcomes][-1] == ("grayscale",)

    with session_scope(engine) as session:
        hour = session.exec(select(CameraHour).where(CameraHour.camera_id == "gate")).all()
        items = session.exec(select(ReviewItem).order_by(ReviewItem.id)).all()
    assert sum(h.alert_episodes for h in hour) == 2 and sum(h.out_of_domain for h in hour) == 1
    assert [item.ood_reasons for item in items] == [[], [], []]  # the three positives; OOD is not queued at manual
    text = generate_latest(registry).decode()
    assert 'monitor_alert_episodes_total{camera="gate",site="north"} 2.0' in text
    assert 'monitor_positives_total{camera="gate",label="grizzly",site="north"} 3.0' in text
    assert 'monitor_out_of_domain_frames_total{camera="gate",reason="grayscale",site="north"} 1.0' in text
    assert "monitor_alerts_total{" not in text.replace("# HELP monitor_alerts_total", "")  # manual never alerts


def test_review_items_keep_their_ood_reasons(store, tmp_path):
    from monitor.store import SnapshotStore, record_predictions
    from monitor.store.tables import ReviewItem
    from monitor.types import Frame, Outcome, Prediction, QueueReason, Route

    engine, _ = store
    outcome = Outcome(
        site_id="north",
        frame=Frame("gate", np.zeros((8, 8, 3), np.uint8), NOW),
        prediction=Prediction.from_probabilities({"none": 0.4, "grizzly": 0.6}, "m"),
        route=Route(positive=True, review_reason=QueueReason.OUT_OF_DOMAIN, alert=True),
        ood_reasons=("dark", "blur"),
    )
    with session_scope(engine) as session:
        (item_id,) = record_predictions([outcome], session=session, snapshots=SnapshotStore(tmp_path / "s"))
        assert session.get(ReviewItem, item_id).ood_reasons == ["dark", "blur"]
        hour = session.exec(select(CameraHour)).one()
        assert hour.out_of_domain == 1 and hour.alert_episodes == 0


def test_rollout_status_shows_open_drift_flags_in_the_drift_gate(store, tmp_path, database_url):
    from click.testing import CliRunner

    from rollout.cli import main

    engine, config = store
    with session_scope(engine) as session:
        session.add(DriftFlag(site_id="north", camera_id="gate", kind="class_mix", opened_at=NOW, last_seen_at=NOW,
                              statistic=0.3, detail="class mix moved 0.30 (total variation) over 1d"))
        session.commit()
    path = tmp_path / "monitor.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_defaults=True)))
    result = CliRunner().invoke(main, ["status", "-c", str(path), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    statuses = {s["site_id"]: s for s in json.loads(result.output)}
    north = {g["name"]: g for g in statuses["north"]["gates"]["gates"]}
    south = {g["name"]: g for g in statuses["south"]["gates"]["gates"]}
    assert north["drift"]["verdict"] == "FAIL" and "class_mix on camera gate since 2026-07-01 12:30" in north["drift"]["detail"]
    assert south["drift"]["verdict"] == "PASS" and south["drift"]["numbers"]["detector"] is True
