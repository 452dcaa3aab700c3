"""Promotion, rollback, evaluation with automatic rollback, windows: rules and audit log."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlmodel import select

from monitor.store import session_scope
from rollout import store
from rollout.gates import Verdict
from rollout.promote import (
    AUTO_ROLLBACK_ACTOR,
    GatesNotPassed,
    RolloutError,
    RolloutUsageError,
    StageConflict,
    add_window,
    evaluate,
    evaluate_all,
    promote,
    remove_window,
    rollback,
)
from rollout.stages import Stage, is_legal_transition, parse_stage
from rollout.status import all_statuses, site_history, site_status
from rollout.tables import RolloutEvent

from rollout_helpers import START, add_counts, add_items, start_sites

FAST_GATES = {
    "min_reviewed": 50, "min_days_in_stage": 1, "min_decided_positives": 30, "min_decided_negatives": 30,
    "miss_rate_max": 0.2, "min_baseline_positives": 20, "min_expected_positives": 5,
}


def fill(engine, *, start, hours: int, positives_per_hour: int = 2, approved_share: float = 1.0,
         predictions_per_hour: int = 100, site_id="north", camera_id="cam-n1") -> None:
    """Hourly counts plus decided reviews: every positive reviewed, a few negatives."""
    with session_scope(engine) as s:
        for hour in range(hours):
            moment = start + timedelta(hours=hour, minutes=30)
            add_counts(s, camera_id=camera_id, hour=moment, label="grizzly", predictions=positives_per_hour,
                       positives=positives_per_hour)
            add_counts(s, camera_id=camera_id, hour=moment, label="none",
                       predictions=predictions_per_hour - positives_per_hour)
        approved = round(hours * positives_per_hour * approved_share)
        add_items(s, count=approved, reason="positive", status="approved", captured_at=start + timedelta(minutes=5),
                  site_id=site_id, camera_id=camera_id)
        add_items(s, count=hours * positives_per_hour - approved, reason="positive", status="rejected",
                  captured_at=start + timedelta(minutes=5), site_id=site_id, camera_id=camera_id)
        add_items(s, count=hours * 2, reason="negative_sample", status="approved", label="none",
                  captured_at=start + timedelta(minutes=5), site_id=site_id, camera_id=camera_id)


def events(engine, site_id="north") -> list[RolloutEvent]:
    with session_scope(engine) as s:
        return list(s.exec(select(RolloutEvent).where(RolloutEvent.site_id == site_id).order_by(RolloutEvent.id)))


def test_stage_steps():
    assert [s.next() for s in Stage] == [Stage.LIMITED, Stage.EXPANSION, Stage.FULL, None]
    assert is_legal_transition(Stage.MANUAL, Stage.LIMITED) and not is_legal_transition(Stage.MANUAL, Stage.FULL)
    assert parse_stage(" Limited ") is Stage.LIMITED
    with pytest.raises(ValueError, match="manual, limited, expansion, full"):
        parse_stage("beta")


def test_promotion_refused_with_the_gates_then_allowed_when_they_pass(synced, make_ctx, clock):
    ctx = make_ctx(gates=FAST_GATES)
    with session_scope(synced) as s:
        start_sites(s)
    fill(synced, start=START, hours=24)
    clock.set(START + timedelta(hours=12))
    with session_scope(synced) as s, pytest.raises(GatesNotPassed) as refused:
        promote("north", session=s, ctx=ctx, actor="ranger")
    assert {r.name for r in refused.value.report.not_passed()} == {"days"}
    assert "days INSUFFICIENT DATA" in str(refused.value) and "\n" not in str(refused.value)
    assert events(synced) == []

    clock.set(START + timedelta(days=1, hours=1))
    with session_scope(synced) as s:
        transition = promote("north", session=s, ctx=ctx, actor="ranger", reason="numbers are good")
    assert (transition.from_stage, transition.to_stage, transition.forced) == (Stage.MANUAL, Stage.LIMITED, False)
    [event] = events(synced)
    assert (event.actor, event.action, event.from_stage, event.to_stage) == ("ranger", "promote", "manual", "limited")
    assert event.model_id == "sim-model@1"  # the model that made the site's latest review item
    assert event.reason == "numbers are good" and event.at == clock()
    assert event.evidence["verdict"] == "PASS"
    precision = next(g for g in event.evidence["gates"] if g["name"] == "precision")
    assert precision["numbers"]["decided"] == 48 and precision["numbers"]["lower"] > 0.9
    with session_scope(synced) as s:
        state = store.get_state("north", session=s)
    assert (state.stage, state.since) == ("limited", clock())


def test_forced_promotion_needs_a_reason_and_is_marked(synced, make_ctx):
    ctx = make_ctx()
    with session_scope(synced) as s, pytest.raises(RolloutUsageError, match="reason"):
        promote("north", session=s, ctx=ctx, actor="ranger", force=True, reason="  ")
    with session_scope(synced) as s:
        transition = promote("north", session=s, ctx=ctx, actor="ranger", force=True, reason="pilot week")
    assert transition.forced and transition.report.verdict is Verdict.INSUFFICIENT
    [event] = events(synced)
    assert event.forced and event.evidence["verdict"] == "INSUFFICIENT DATA" and event.reason == "pilot week"


def test_one_step_at_a_time_up_to_full_and_down_to_manual(synced, make_ctx, clock):
    ctx = make_ctx()
    for expected in (Stage.LIMITED, Stage.EXPANSION, Stage.FULL):
        clock.advance(hours=1)
        with session_scope(synced) as s:
            assert promote("north", session=s, ctx=ctx, actor="r", force=True, reason="test").to_stage is expected
    with session_scope(synced) as s, pytest.raises(RolloutError, match="already at full"):
        promote("north", session=s, ctx=ctx, actor="r", force=True, reason="test")
    with session_scope(synced) as s, pytest.raises(RolloutUsageError, match="reason"):
        rollback("north", session=s, ctx=ctx, actor="r", reason="")
    for expected in (Stage.EXPANSION, Stage.LIMITED, Stage.MANUAL):
        clock.advance(hours=1)
        with session_scope(synced) as s:
            assert rollback("north", session=s, ctx=ctx, actor="r", reason="bad night").to_stage is expected
    with session_scope(synced) as s, pytest.raises(RolloutError, match="already at manual"):
        rollback("north", session=s, ctx=ctx, actor="r", reason="x")
    log = events(synced)
    assert [(e.from_stage, e.to_stage) for e in log] == [
        ("manual", "limited"), ("limited", "expansion"), ("expansion", "full"),
        ("full", "expansion"), ("expansion", "limited"), ("limited", "manual"),
    ]
    with session_scope(synced) as s:
        periods = store.stage_periods("north", session=s)
        history = site_history("north", session=s, ctx=ctx)
    assert [p.stage for p in periods] == [Stage.MANUAL, Stage.LIMITED, Stage.EXPANSION, Stage.FULL,
                                          Stage.EXPANSION, Stage.LIMITED, Stage.MANUAL]
    assert periods[0].start is None and periods[-1].end is None
    assert [h.id for h in history] == sorted((h.id for h in history), reverse=True)  # newest first


def test_unknown_site_is_a_usage_error(synced, make_ctx):
    with session_scope(synced) as s, pytest.raises(RolloutUsageError, match="not in the config"):
        promote("west", session=s, ctx=make_ctx(), actor="r", force=True, reason="x")


def test_racing_changes_cannot_both_apply(synced, make_ctx):
    """Someone else promotes while this promotion is evaluating its gates: it must not apply on top."""
    ctx = make_ctx()
    with session_scope(synced) as s:
        start_sites(s)

    def meanwhile(site_id):
        if site_id == "north" and not events(synced):
            with session_scope(synced) as other:
                promote("north", session=other, ctx=make_ctx(), actor="other", force=True, reason="first")
        return []

    racing = make_ctx(drift_flags=meanwhile)
    with session_scope(synced) as s, pytest.raises(StageConflict):
        promote("north", session=s, ctx=racing, actor="second", force=True, reason="second")
    assert [(e.actor, e.to_stage) for e in events(synced)] == [("other", "limited")]


def _failing_limited_site(engine, ctx, clock):
    """North at limited with precision far below target; returns after the promotion."""
    with session_scope(engine) as s:
        start_sites(s)
        promote("north", session=s, ctx=ctx, actor="r", force=True, reason="start")
    fill(engine, start=clock() + timedelta(minutes=1), hours=24, approved_share=0.5)
    clock.advance(days=1, hours=1)


def test_auto_rollback_after_k_consecutive_failures(synced, make_ctx, clock):
    ctx = make_ctx(gates=FAST_GATES, auto_rollback={"enabled": True, "consecutive_failures": 3})
    _failing_limited_site(synced, ctx, clock)
    for expected_run in (1, 2):
        with session_scope(synced) as s:
            evaluation = evaluate("north", session=s, ctx=ctx)
        assert evaluation.report.verdict is Verdict.FAIL and evaluation.rolled_back is None
        assert evaluation.consecutive_failures == expected_run
        clock.advance(hours=1)
    with session_scope(synced) as s:
        evaluation = evaluate("north", session=s, ctx=ctx)
    assert evaluation.rolled_back is not None and evaluation.rolled_back.to_stage is Stage.MANUAL
    last = events(synced)[-1]
    assert (last.action, last.actor, last.from_stage, last.to_stage) == (
        "auto_rollback", AUTO_ROLLBACK_ACTOR, "limited", "manual")
    assert "3 consecutive evaluations" in last.reason and "precision" in last.reason
    assert last.evidence["verdict"] == "FAIL"
    # At manual, failures are no longer counted and nothing rolls back further.
    with session_scope(synced) as s:
        evaluation = evaluate("north", session=s, ctx=ctx)
    assert evaluation.consecutive_failures == 0 and evaluation.rolled_back is None


def test_failures_are_counted_but_nothing_rolls_back_when_auto_rollback_is_off(synced, make_ctx, clock):
    ctx = make_ctx(gates=FAST_GATES)
    _failing_limited_site(synced, ctx, clock)
    for expected_run in (1, 2, 3, 4):
        with session_scope(synced) as s:
            evaluation = evaluate("north", session=s, ctx=ctx)
        assert evaluation.consecutive_failures == expected_run and evaluation.rolled_back is None
    with session_scope(synced) as s:
        state = store.get_state("north", session=s)
    assert (state.stage, state.consecutive_failures, state.last_verdict) == ("limited", 4, "FAIL")


def test_a_verdict_other_than_fail_ends_the_run_of_failures(synced, make_ctx, clock):
    flags = ["confidence drift"]
    ctx = make_ctx(gates=FAST_GATES, drift_flags=lambda site: list(flags),
                   auto_rollback={"enabled": True, "consecutive_failures": 2})
    with session_scope(synced) as s:
        promote("north", session=s, ctx=ctx, actor="r", force=True, reason="start")
    with session_scope(synced) as s:
        assert evaluate("north", session=s, ctx=ctx).consecutive_failures == 1
    flags.clear()  # now only INSUFFICIENT DATA: not a failure
    with session_scope(synced) as s:
        assert evaluate("north", session=s, ctx=ctx).consecutive_failures == 0
    flags.append("confidence drift")
    with session_scope(synced) as s:
        evaluation = evaluate("north", session=s, ctx=ctx)
    assert evaluation.consecutive_failures == 1 and evaluation.rolled_back is None


def test_evaluate_all_keeps_going_past_a_failing_site(synced, make_ctx):
    def flaky(site_id):
        if site_id == "north":
            raise RuntimeError("detector down")
        return []

    results = evaluate_all(["north", "south"], engine=synced, ctx=make_ctx(drift_flags=flaky))
    assert isinstance(results["north"], RuntimeError)
    assert results["south"].report.site_id == "south"


def test_windows_are_added_removed_and_audited(synced, make_ctx, clock):
    ctx = make_ctx()
    with session_scope(synced) as s:
        window = add_window("north", session=s, ctx=ctx, actor="ranger", cron="0 */4 * * *",
                            until=START + timedelta(days=30))
    assert window.duration_s == 3600 and window.timezone == "UTC"
    with session_scope(synced) as s:
        status = site_status("north", session=s, ctx=ctx)
    [shown] = status.windows
    assert shown.open_now and shown.next_open == (START, START + timedelta(hours=1))
    with session_scope(synced) as s, pytest.raises(RolloutUsageError, match="no window"):
        remove_window(window.id, session=s, ctx=ctx, actor="ranger", site_id="south")
    with session_scope(synced) as s:
        remove_window(window.id, session=s, ctx=ctx, actor="ranger", site_id="north")
    with session_scope(synced) as s:
        assert site_status("north", session=s, ctx=ctx).windows == ()
    assert [e.action for e in events(synced)] == ["window_added", "window_removed"]
    assert events(synced)[0].evidence["cron"] == "0 */4 * * *"


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"cron": "0 */4 * *", "until": START + timedelta(days=1)}, "five fields"),
        ({"cron": "0 * * * *", "until": START - timedelta(days=1)}, "already past"),
        ({"cron": "0 * * * *", "until": START + timedelta(days=1), "tz": "Nowhere/Town"}, "time zone"),
        ({"cron": "0 * * * *", "until": START + timedelta(days=1), "duration": timedelta(days=60)}, "31 days"),
    ],
)
def test_bad_windows_are_usage_errors(synced, make_ctx, kwargs, message):
    with session_scope(synced) as s, pytest.raises(RolloutUsageError, match=message):
        add_window("north", session=s, ctx=make_ctx(), actor="r", **kwargs)
    assert events(synced) == []


def test_all_statuses_lists_every_configured_site(synced, make_ctx):
    with session_scope(synced) as s:
        statuses = all_statuses(session=s, ctx=make_ctx())
    assert [st.site_id for st in statuses] == ["north", "south"]
    assert all(st.stage is Stage.MANUAL and st.next_stage is Stage.LIMITED for st in statuses)
    assert statuses[0].to_dict()["gates"]["verdict"] == "INSUFFICIENT DATA"


def test_evaluation_job_runs_in_the_background(synced, make_ctx, clock):
    import time

    from rollout.promote import EvaluationJob

    ctx = make_ctx(gates=FAST_GATES, auto_rollback={"enabled": True, "consecutive_failures": 2})
    _failing_limited_site(synced, ctx, clock)
    job = EvaluationJob(synced, ctx, interval=0.05)
    job.start()
    try:
        deadline = time.monotonic() + 10
        while job.runs < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        job.stop()
    assert not job.alive and job.runs >= 2
    with session_scope(synced) as s:
        assert store.get_state("north", session=s).stage == "manual"
    assert events(synced)[-1].action == "auto_rollback"


def test_evaluation_job_evaluates_only_while_this_worker_leads(synced, make_ctx, clock):
    """With many workers each evaluation counts a failure: only the rollout job's leader may evaluate."""
    import time

    from rollout.promote import EvaluationJob

    class Lease:  # what EvaluationJob asks of monitor.job_lease.JobLease
        holding = False

        def holds(self) -> bool:
            return self.holding

    ctx = make_ctx(gates=FAST_GATES, auto_rollback={"enabled": True, "consecutive_failures": 2})
    _failing_limited_site(synced, ctx, clock)
    lease = Lease()
    job = EvaluationJob(synced, ctx, interval=0.05, leader=lease)
    job.start()
    try:
        time.sleep(0.5)  # ten ticks while another worker leads
        assert job.runs == 0
        with session_scope(synced) as s:
            assert store.get_state("north", session=s).stage == "limited"
        lease.holding = True
        deadline = time.monotonic() + 10
        while job.runs < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        job.stop()
    assert job.runs >= 2
    assert events(synced)[-1].action == "auto_rollback"


def test_ensure_states_creates_a_row_once_from_the_first_data(synced, clock):
    with session_scope(synced) as s:
        add_counts(s, camera_id="cam-n1", hour=START - timedelta(days=20), label="none", predictions=5)
    clock.set(START)
    with session_scope(synced) as s:
        first = store.ensure_states(["north", "south", "north"], session=s, now=clock())
    assert first["north"].since == START - timedelta(days=20)  # manual ever since it had data
    assert first["south"].since == START
    clock.advance(days=3)
    with session_scope(synced) as s:
        again = store.ensure_states(["north"], session=s, now=clock())
        assert len(store.list_states(session=s)) == 2
    assert again["north"].since == START - timedelta(days=20)
