"""Gates: boundaries table-driven (just above, just below, too little data), then the
evidence they are fed from a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from monitor.store import session_scope
from rollout.config import GatesConfig
from rollout.gates import (
    Evidence,
    Positivity,
    Verdict,
    evaluate_gates,
    gate_alert_rate,
    gate_days,
    gate_drift,
    gate_misses,
    gate_precision,
    gate_reviewed,
    judge,
)
from rollout.stages import Stage
from rollout.tables import RolloutEvent

from rollout_helpers import START, add_counts, add_items, start_sites

P, F, I = Verdict.PASS, Verdict.FAIL, Verdict.INSUFFICIENT


# ---------------------------------------------------------------- boundaries, pure


@pytest.mark.parametrize(
    "decided,minimum,expected",
    [(200, 200, P), (201, 200, P), (199, 200, I), (0, 200, I)],
)
def test_reviewed_gate(decided, minimum, expected):
    result = gate_reviewed(decided, minimum, pending=7)
    assert result.verdict is expected
    assert result.numbers == {"decided": decided, "required": minimum, "pending": 7}


@pytest.mark.parametrize("days,minimum,expected", [(7.0, 7.0, P), (7.01, 7.0, P), (6.99, 7.0, I), (0.0, 0.0, P)])
def test_days_gate(days, minimum, expected):
    assert gate_days(days, minimum).verdict is expected


# Wilson 95% with 100 decided: 96 approved gives a lower bound of 0.9016 (>= 0.9), 95 gives
# 0.8882; 84 approved gives an upper bound of 0.8990 (< 0.9), 85 gives 0.9069.
@pytest.mark.parametrize(
    "approved,decided,expected,why",
    [
        (96, 100, P, "lower bound just above the target"),
        (95, 100, I, "lower bound just below the target, estimate above it"),
        (85, 100, I, "upper bound just above the target, estimate below it"),
        (84, 100, F, "upper bound just below the target"),
        (189, 200, P, "more data: 0.945 is enough"),
        (188, 200, I, "more data: 0.94 is not"),
        (29, 29, I, "perfect but fewer decided than the minimum of 30"),
        (0, 0, I, "nothing decided"),
        (0, 10, F, "few, but significantly bad: sparse data may fail, never pass"),
    ],
)
def test_precision_gate_boundaries(approved, decided, expected, why):
    result = gate_precision(approved, decided, target=0.9, minimum=30, confidence=0.95)
    assert result.verdict is expected, why
    assert result.numbers["approved"] == approved and result.numbers["decided"] == decided


# Clopper-Pearson 95% with 300 decided negatives: 1 miss gives an upper bound of 0.0184
# (<= 0.02), 2 give 0.0239; 12 misses give a lower bound of 0.0208 (> 0.02), 11 give 0.0184.
@pytest.mark.parametrize(
    "misses,decided,expected,why",
    [
        (1, 300, P, "upper bound just below the target"),
        (2, 300, I, "upper bound just above the target"),
        (11, 300, I, "lower bound just below the target"),
        (12, 300, F, "lower bound just above the target"),
        (0, 99, I, "no misses but fewer decided than the minimum of 100"),
        (0, 100, I, "no misses in 100 still allows a 3.6% miss rate"),
        (0, 0, I, "nothing decided"),
    ],
)
def test_misses_gate_boundaries(misses, decided, expected, why):
    result = gate_misses(misses, decided, maximum=0.02, minimum=100, confidence=0.95)
    assert result.verdict is expected, why


# Baseline 200 positives in 10000 stills, now 10000 stills: the exact 95% interval of the
# ratio lies inside [0.5, 2] for 126..334 positives; wholly below 0.5 up to 76, wholly above
# 2 from 473.
@pytest.mark.parametrize(
    "positives,expected,why",
    [
        (200, P, "unchanged"),
        (126, P, "interval's lower end just above 0.5"),
        (125, I, "interval's lower end just below 0.5"),
        (334, P, "interval's upper end just below 2"),
        (335, I, "interval's upper end just above 2"),
        (400, I, "exactly doubled: on the edge, never passes"),
        (472, I, "more than doubled, not yet significantly"),
        (473, F, "significantly above 2"),
        (76, F, "significantly below 0.5"),
        (77, I, "below 0.5, not significantly"),
    ],
)
def test_alert_rate_gate_boundaries(positives, expected, why):
    result = gate_alert_rate(
        positives, 10_000, 200, 10_000, low=0.5, high=2.0, min_baseline=30, min_expected=10, confidence=0.95
    )
    assert result.verdict is expected, why
    assert result.numbers["ratio"] == pytest.approx(positives / 200)


@pytest.mark.parametrize(
    "positives,predictions,baseline,baseline_predictions,expected,why",
    [
        (20, 1000, 29, 1450, I, "baseline below its minimum of 30 positives"),
        (9, 450, 300, 15_000, I, "only 9 positives expected now at the baseline rate (minimum 10)"),
        (0, 0, 300, 15_000, I, "no stills classified yet"),
        (5, 100, 0, 15_000, I, "a baseline without positives has no rate"),
    ],
)
def test_alert_rate_gate_needs_enough_data(positives, predictions, baseline, baseline_predictions, expected, why):
    result = gate_alert_rate(
        positives, predictions, baseline, baseline_predictions,
        low=0.5, high=2.0, min_baseline=30, min_expected=10, confidence=0.95,
    )
    assert result.verdict is expected, why


@pytest.mark.parametrize("baseline,expected", [(30, P), (29, I), (0, I)])
def test_alert_rate_gate_at_manual_judges_the_baseline_only(baseline, expected):
    result = gate_alert_rate(
        0, 0, baseline, 10_000, low=0.5, high=2.0, min_baseline=30, min_expected=10, confidence=0.95,
        baseline_stage=True,
    )
    assert result.verdict is expected


def test_drift_gate():
    assert gate_drift([], detector=True).verdict is P
    assert "no drift detector" in gate_drift([], detector=False).detail
    flagged = gate_drift(["class mix shifted at cam-n1"], detector=True)
    assert flagged.verdict is F and flagged.numbers["open_flags"] == 1


def _evidence(**changes) -> Evidence:
    good = dict(
        stage=Stage.LIMITED, since=START, now=START + timedelta(days=8), window_start=START,
        decided=500, pending=3, positives_decided=200, positives_approved=195, negatives_decided=300,
        misses=0, out_of_domain_decided=4, positives=200, predictions=10_000, baseline_positives=200,
        baseline_predictions=10_000, baseline_hours=100,
    )
    good.update(changes)
    return Evidence(**good)


@pytest.mark.parametrize(
    "changes,expected",
    [
        ({}, P),
        ({"now": START + timedelta(days=6)}, I),  # too soon
        ({"positives_approved": 150}, F),  # one gate failing fails the whole report
        ({"decided": 10, "positives_approved": 150}, F),  # FAIL wins over INSUFFICIENT
        ({"drift_flags": ("rate drift",), "drift_detector": True}, F),
    ],
)
def test_report_verdict_combines_gates(changes, expected):
    report = judge("north", _evidence(**changes), GatesConfig())
    assert report.verdict is expected
    assert [r.name for r in report.results] == ["reviewed", "days", "precision", "misses", "alert_rate", "drift"]
    json.dumps(report.to_evidence(), allow_nan=False)  # storable as JSON as is


def test_min_days_can_differ_per_stage():
    gates = GatesConfig(min_days_by_stage={"limited": 30})
    assert judge("north", _evidence(), gates).results[1].verdict is I
    assert judge("north", _evidence(stage=Stage.EXPANSION), gates).results[1].verdict is P


# ---------------------------------------------------------------- evidence from the database


def test_evidence_counts_the_right_reviews(synced, make_ctx, clock):
    """Precision from sampled positives and positive audit items; misses from negative samples and
    negative audit items; out-of-domain items counted but not used; pending ones not decided."""
    ctx = make_ctx()
    at = START + timedelta(hours=3)
    with session_scope(synced) as s:
        start_sites(s)
        add_items(s, count=40, reason="positive", status="approved", captured_at=at)
        add_items(s, count=5, reason="positive", status="rejected", captured_at=at)
        add_items(s, count=2, reason="positive", status="relabelled", review_label="black", captured_at=at)
        add_items(s, count=3, reason="positive", status="pending", captured_at=at)
        add_items(s, count=100, reason="negative_sample", status="approved", label="none", captured_at=at)
        # misses: a bear the model saw below threshold and the reviewer confirmed, and relabels to a bear
        add_items(s, count=1, reason="negative_sample", status="approved", label="grizzly", confidence=0.3,
                  captured_at=at)
        add_items(s, count=2, reason="negative_sample", status="relabelled", label="none", review_label="polar",
                  captured_at=at)
        # not misses: relabelled to a label that never alerts, or rejected without a label
        add_items(s, count=1, reason="negative_sample", status="relabelled", label="none", review_label="teddy",
                  captured_at=at)
        add_items(s, count=1, reason="negative_sample", status="rejected", label="none", captured_at=at)
        add_items(s, count=7, reason="out_of_domain", status="rejected", captured_at=at)
        # audit items: cam-n2's threshold is 0.8, so 0.7 there is a negative, 0.85 a positive
        add_items(s, count=4, reason="audit", status="approved", camera_id="cam-n2", confidence=0.85, captured_at=at)
        add_items(s, count=1, reason="audit", status="rejected", camera_id="cam-n2", confidence=0.85, captured_at=at)
        add_items(s, count=3, reason="audit", status="approved", camera_id="cam-n2", confidence=0.7, captured_at=at)
        # another site's items never count
        add_items(s, count=50, reason="positive", status="rejected", site_id="south", camera_id="cam-s1",
                  captured_at=at)
    clock.set(START + timedelta(days=1))
    with session_scope(synced) as s:
        report = evaluate_gates("north", session=s, gates=ctx.config.gates, positivity=ctx.positivity, now=clock())
    by_name = {r.name: r for r in report.results}
    assert by_name["precision"].numbers["decided"] == 40 + 5 + 2 + 4 + 1
    assert by_name["precision"].numbers["approved"] == 40 + 4
    assert by_name["misses"].numbers["decided"] == 100 + 1 + 2 + 1 + 1 + 3
    assert by_name["misses"].numbers["misses"] == 1 + 2 + 3  # cam-n2 audit at 0.7: a grizzly below threshold
    assert by_name["reviewed"].numbers == {"decided": 47 + 105 + 7 + 8, "required": 200, "pending": 3}


def test_evidence_window_starts_at_the_stage_and_reaches_back_at_most_evidence_window(synced, make_ctx, clock):
    ctx = make_ctx(gates={"evidence_window": "2d"})
    with session_scope(synced) as s:
        start_sites(s)
        add_items(s, count=10, reason="positive", status="approved", captured_at=START + timedelta(hours=1))
        add_items(s, count=20, reason="positive", status="approved", captured_at=START + timedelta(days=4))
    clock.set(START + timedelta(days=5))
    with session_scope(synced) as s:
        s.add(
            RolloutEvent(site_id="north", at=START, actor="t", action="promote", from_stage="manual",
                         to_stage="limited")
        )
        report = evaluate_gates("north", session=s, gates=ctx.config.gates, positivity=ctx.positivity, now=clock())
    assert report.window_start == START + timedelta(days=3)
    assert {r.name: r for r in report.results}["precision"].numbers["decided"] == 20


def test_alert_rate_compares_with_the_manual_periods_only(synced, make_ctx, clock):
    """Baseline = hours in manual periods (from the audit log); current = hours since the stage began."""
    from rollout import store

    ctx = make_ctx()
    promoted = START + timedelta(days=2)
    with session_scope(synced) as s:
        for hour in range(48):  # manual: 1 positive per 100 stills
            add_counts(s, camera_id="cam-n1", hour=START + timedelta(hours=hour), label="none", predictions=99)
            add_counts(s, camera_id="cam-n1", hour=START + timedelta(hours=hour), label="grizzly", predictions=1,
                       positives=1)
        for hour in range(48, 96):  # limited: 3 per 100
            add_counts(s, camera_id="cam-n1", hour=START + timedelta(hours=hour), label="none", predictions=97)
            add_counts(s, camera_id="cam-n1", hour=START + timedelta(hours=hour), label="grizzly", predictions=3,
                       positives=3)
        # the other site's counts never count
        add_counts(s, camera_id="cam-s1", hour=START, label="grizzly", predictions=1000, positives=1000)
        state = store.ensure_states(["north"], session=s, now=START)["north"]
        assert store.set_stage("north", expected_version=state.version, stage=Stage.LIMITED, since=promoted,
                               model_id=None, session=s)
        s.add(RolloutEvent(site_id="north", at=promoted, actor="t", action="promote", from_stage="manual",
                           to_stage="limited"))
    clock.set(START + timedelta(days=4))
    with session_scope(synced) as s:
        report = evaluate_gates("north", session=s, gates=ctx.config.gates, positivity=ctx.positivity, now=clock())
    rate = {r.name: r for r in report.results}["alert_rate"]
    assert rate.numbers["baseline_positives"] == 48 and rate.numbers["baseline_predictions"] == 4800
    assert rate.numbers["positives"] == 144 and rate.numbers["predictions"] == 4800
    assert rate.numbers["ratio"] == pytest.approx(3.0)
    assert rate.verdict is F


def test_drift_flags_come_from_the_provider(synced, make_ctx, clock):
    ctx = make_ctx(drift_flags=lambda site: ["confidence drift on cam-n1"] if site == "north" else [])
    with session_scope(synced) as s:
        north = evaluate_gates("north", session=s, gates=ctx.config.gates, positivity=ctx.positivity, now=clock(),
                               drift_flags=ctx.drift_flags)
        south = evaluate_gates("south", session=s, gates=ctx.config.gates, positivity=ctx.positivity, now=clock(),
                               drift_flags=ctx.drift_flags)
    assert {r.name: r for r in north.results}["drift"].verdict is F
    assert {r.name: r for r in south.results}["drift"].verdict is P


def test_positivity_from_config_uses_camera_thresholds(monitor_config):
    positivity = Positivity.from_config(monitor_config)
    assert positivity.is_positive("cam-n1", "grizzly", 0.6)
    assert not positivity.is_positive("cam-n2", "grizzly", 0.6)
    assert not positivity.is_positive("cam-n1", "teddy", 0.99)
