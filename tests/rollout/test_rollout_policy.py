"""Routing per stage, schedule windows, and stage changes reaching a running policy."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from monitor.store import StoreError, session_scope, sync_sites_and_cameras
from monitor.types import Prediction, QueueReason, Route
from rollout.config import RoutingConfig
from rollout.policy import ManualPolicy, PolicyRefresher, StagePolicy, StageSnapshot, load_snapshot
from rollout.promote import add_window, promote
from rollout.schedule import WindowSpec, open_intervals, parse_cron, parse_until
from rollout.stages import Stage

from rollout_helpers import START, FakeClock

REPO = Path(__file__).resolve().parents[2]


class FixedRng:
    """random() always returns the same number: 0.0 samples everything, 0.999 nothing."""

    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


def prediction(label: str = "grizzly", confidence: float = 0.9) -> Prediction:
    others = {"none": 1.0 - confidence} if label != "none" else {"grizzly": 1.0 - confidence}
    return Prediction(label, confidence, {label: confidence, **others}, "m@1")


def policy_at(stage: Stage, *, rng_value: float, window_open: bool = False, clock=None) -> StagePolicy:
    clock = clock or FakeClock(START + timedelta(minutes=30))
    windows = {}
    open_windows = {}
    if window_open is not None:
        spec = WindowSpec("0 * * * *" if window_open else "0 0 1 1 *", timedelta(minutes=45), START + timedelta(days=30))
        windows = {"north": (spec,)}
        open_windows = {"north": open_intervals([spec], clock(), clock() + timedelta(minutes=2))}
    snapshot = StageSnapshot(
        stages={"north": stage}, windows=windows, open_windows=open_windows,
        taken_at=clock(), valid_until=clock() + timedelta(minutes=2),
    )
    return StagePolicy(RoutingConfig(), rng=FixedRng(rng_value), clock=clock, snapshot=snapshot)


POS, NEG, OOD, AUD = QueueReason.POSITIVE, QueueReason.NEGATIVE_SAMPLE, QueueReason.OUT_OF_DOMAIN, QueueReason.AUDIT
NEVER, ALWAYS = 0.999, 0.0


@pytest.mark.parametrize(
    "stage,positive,out_of_domain,confidence,rng,window_open,expected",
    [
        # manual: positives always reviewed, never alert; negatives sampled
        (Stage.MANUAL, True, False, 0.9, NEVER, False, Route(True, POS, False)),
        (Stage.MANUAL, False, False, 0.9, ALWAYS, False, Route(False, NEG, False)),
        (Stage.MANUAL, False, False, 0.9, NEVER, False, Route(False, None, False)),
        (Stage.MANUAL, False, True, 0.9, NEVER, False, Route(False, None, False)),  # OOD review off by default
        # limited: inside a window positives alert and are reviewed; outside, as manual
        (Stage.LIMITED, True, False, 0.9, NEVER, True, Route(True, POS, True)),
        (Stage.LIMITED, True, False, 0.9, NEVER, False, Route(True, POS, False)),
        (Stage.LIMITED, False, False, 0.9, ALWAYS, True, Route(False, NEG, False)),
        (Stage.LIMITED, False, False, 0.9, NEVER, True, Route(False, None, False)),
        (Stage.LIMITED, True, False, 0.9, NEVER, None, Route(True, POS, False)),  # no windows at all
        # expansion: positives alert; a sample and every doubtful frame reviewed
        (Stage.EXPANSION, True, False, 0.9, ALWAYS, False, Route(True, POS, True)),
        (Stage.EXPANSION, True, False, 0.9, NEVER, False, Route(True, None, True)),
        (Stage.EXPANSION, True, True, 0.9, NEVER, False, Route(True, OOD, True)),
        (Stage.EXPANSION, True, False, 0.55, NEVER, False, Route(True, OOD, True)),  # low confidence
        (Stage.EXPANSION, False, False, 0.9, ALWAYS, False, Route(False, NEG, False)),
        (Stage.EXPANSION, False, False, 0.59, NEVER, False, Route(False, OOD, False)),
        (Stage.EXPANSION, False, False, 0.6, NEVER, False, Route(False, None, False)),  # at the floor: not low
        (Stage.EXPANSION, True, True, 0.9, ALWAYS, False, Route(True, POS, True)),  # sampled first: unbiased
        # full: positives alert; audit sample of everything and every OOD frame
        (Stage.FULL, True, False, 0.9, NEVER, False, Route(True, None, True)),
        (Stage.FULL, True, False, 0.9, ALWAYS, False, Route(True, AUD, True)),
        (Stage.FULL, False, False, 0.9, ALWAYS, False, Route(False, AUD, False)),
        (Stage.FULL, False, True, 0.9, NEVER, False, Route(False, OOD, False)),
        (Stage.FULL, False, False, 0.3, NEVER, False, Route(False, None, False)),  # low confidence off at full
    ],
)
def test_route_per_stage(stage, positive, out_of_domain, confidence, rng, window_open, expected):
    policy = policy_at(stage, rng_value=rng, window_open=window_open)
    label = "grizzly" if positive else "none"
    route = policy.route(
        site_id="north", camera_id="cam-n1", prediction=prediction(label, confidence), positive=positive,
        out_of_domain=out_of_domain,
    )
    assert route == expected


def test_unknown_sites_and_a_policy_never_refreshed_are_manual():
    policy = StagePolicy(rng=FixedRng(NEVER))
    route = policy.route(site_id="anywhere", camera_id="c", prediction=prediction(), positive=True)
    assert route == Route(True, POS, False)


def test_route_accepts_the_pipelines_current_call_without_out_of_domain():
    for policy in (StagePolicy(), ManualPolicy(0.05)):
        policy.route(site_id="north", camera_id="cam-n1", prediction=prediction(), positive=True)


@pytest.mark.parametrize(
    "stage,positive,rate_name,expected_rate",
    [
        (Stage.MANUAL, False, "negative", 0.05),
        (Stage.EXPANSION, True, "positive", 0.25),
        (Stage.EXPANSION, False, "negative", 0.05),
        (Stage.FULL, True, "audit", 0.05),
        (Stage.FULL, False, "audit", 0.05),
    ],
)
def test_sample_rates_are_the_configured_ones(stage, positive, rate_name, expected_rate):
    policy = policy_at(stage, rng_value=0, window_open=None)
    policy._rng = random.Random(7)
    draws = 20_000
    queued = sum(
        policy.route(site_id="north", camera_id="c", prediction=prediction("grizzly" if positive else "none"),
                     positive=positive).queued
        for _ in range(draws)
    )
    # Binomial standard error at 20000 draws is at most 0.0031; allow four of them.
    assert abs(queued / draws - expected_rate) < 4 * (expected_rate * (1 - expected_rate) / draws) ** 0.5


def test_stage_defaults_survive_a_partial_override():
    routing = RoutingConfig.model_validate({"expansion": {"positive_sample_rate": 0.5}})
    assert routing.expansion.positive_sample_rate == 0.5
    assert routing.expansion.negative_sample_rate == 0.05 and routing.expansion.review_low_confidence
    assert routing.full.audit_sample_rate == 0.05


# ---------------------------------------------------------------- schedule windows


def at(hour: int, minute: int = 0, day: int = 1) -> datetime:
    return datetime(2026, 6, day, hour, minute, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    "moment,expected",
    [
        (at(4), True), (at(4, 59), True), (at(5), False), (at(7, 59), False), (at(8, 30), True), (at(0), True),
        (at(3, 59), False),
    ],
)
def test_window_every_four_hours_for_an_hour(moment, expected):
    spec = WindowSpec("0 */4 * * *", timedelta(hours=1), at(0, day=30))
    assert spec.is_open(moment) is expected


def test_windows_stop_at_until_even_mid_window():
    spec = WindowSpec("0 */4 * * *", timedelta(hours=1), at(4, 30, day=3))
    assert spec.is_open(at(4, 10, day=3))
    assert not spec.is_open(at(4, 30, day=3))
    assert not spec.is_open(at(8, 10, day=3))
    assert spec.next_open(at(5, day=3)) is None


def test_window_cron_is_read_in_its_time_zone():
    # 06:00 in Denver (MDT, UTC-6 in June) is 12:00 UTC.
    spec = WindowSpec("0 6 * * *", timedelta(minutes=30), at(0, day=30), tz="America/Denver")
    assert spec.is_open(at(12, 15)) and not spec.is_open(at(6, 15))


def test_overlapping_windows_merge():
    a = WindowSpec("0 * * * *", timedelta(minutes=90), at(0, day=30))
    merged = open_intervals([a], at(0), at(3))
    assert merged == ((at(0) - timedelta(minutes=60), at(3, 30)),)  # 23:00 .. 02:00 + 90 min


def test_snapshot_evaluates_cron_directly_past_its_horizon():
    spec = WindowSpec("0 */4 * * *", timedelta(hours=1), at(0, day=30))
    snapshot = StageSnapshot(
        stages={"north": Stage.LIMITED}, windows={"north": (spec,)},
        open_windows={"north": open_intervals([spec], at(1), at(1, 2))}, taken_at=at(1), valid_until=at(1, 2),
    )
    assert snapshot.in_window("north", at(8, 30)) and not snapshot.in_window("north", at(9, 30))
    assert not snapshot.in_window("south", at(8, 30))


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: parse_cron("0 */4 * *"), "five fields"),
        (lambda: parse_cron("61 * * * *"), "not valid"),
        (lambda: parse_cron("0 * * * *", "Mars/Olympus"), "time zone"),
        (lambda: WindowSpec("0 * * * *", timedelta(days=40), at(0, day=30)), "31 days"),
        (lambda: WindowSpec("0 * * * *", timedelta(0), at(0, day=30)), "more than 0"),
        (lambda: parse_until("next tuesday"), "YYYY-MM-DD"),
        (lambda: parse_until("2026-08-01", "Mars/Olympus"), "time zone"),
    ],
)
def test_bad_schedules_are_refused_in_one_line(call, message):
    with pytest.raises(ValueError) as raised:
        call()
    assert message in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("2026-08-01", datetime(2026, 8, 2, tzinfo=timezone.utc)),  # through the end of that day
        ("20260801", datetime(2026, 8, 2, tzinfo=timezone.utc)),
        ("2026-08-01T06:00", datetime(2026, 8, 1, 6, tzinfo=timezone.utc)),
        ("2026-08-01T06:00+02:00", datetime(2026, 8, 1, 4, tzinfo=timezone.utc)),
    ],
)
def test_until_forms(text, expected):
    assert parse_until(text) == expected


# ---------------------------------------------------------------- refresh from the database


def test_refresh_reads_stages_and_windows(synced, make_ctx, clock):
    ctx = make_ctx()
    clock.set(at(3, 30))
    policy = StagePolicy(rng=FixedRng(NEVER), clock=clock)
    with session_scope(synced) as s:
        promote("north", session=s, ctx=ctx, actor="t", force=True, reason="pilot")
    with session_scope(synced) as s:
        add_window("north", session=s, ctx=ctx, actor="t", cron="0 */4 * * *", until=at(0, day=30),
                   duration=timedelta(hours=1))
    # A window that already ended is not loaded at all.
    with session_scope(synced) as s:
        add_window("north", session=s, ctx=ctx, actor="t", cron="* * * * *", until=at(3, 45))
    assert policy.stage_of("north") is Stage.MANUAL  # nothing read yet
    clock.set(at(3, 50))  # the every-minute windows ended at 03:45; the next 4-hourly one opens at 04:00
    policy.refresh(synced)
    assert list(policy.snapshot.windows) == ["north"] and len(policy.snapshot.windows["north"]) == 1
    assert policy.stage_of("north") is Stage.LIMITED and policy.stage_of("south") is Stage.MANUAL
    grizzly = prediction()
    assert not policy.route(site_id="north", camera_id="cam-n1", prediction=grizzly, positive=True).alert
    clock.set(at(4, 5))
    assert policy.route(site_id="north", camera_id="cam-n1", prediction=grizzly, positive=True).alert
    clock.set(at(5, 0))
    assert not policy.route(site_id="north", camera_id="cam-n1", prediction=grizzly, positive=True).alert


def test_refresher_keeps_the_last_snapshot_when_the_database_fails(tmp_path, selected_engine, make_ctx, clock):
    with session_scope(selected_engine) as s:
        promote("north", session=s, ctx=make_ctx(), actor="t", force=True, reason="pilot")
    policy = StagePolicy(clock=clock)
    refresher = PolicyRefresher(policy, selected_engine, interval=0.05)
    refresher.start()
    try:
        assert policy.stage_of("north") is Stage.LIMITED
        with selected_engine.begin() as connection:
            connection.exec_driver_sql("DROP TABLE rollout_site_stages")
        deadline = time.monotonic() + 5
        while refresher.failures == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert refresher.failures > 0 and refresher.alive
        assert policy.stage_of("north") is Stage.LIMITED
    finally:
        refresher.stop()
    assert not refresher.alive
    with pytest.raises(StoreError):
        policy.refresh(selected_engine)


def test_refresh_interval_is_at_most_five_seconds(selected_engine):
    with pytest.raises(ValueError, match="at most 5"):
        PolicyRefresher(StagePolicy(), selected_engine, interval=6)


def test_load_snapshot_skips_a_window_row_that_no_longer_parses(selected_engine, make_ctx, clock):
    with session_scope(selected_engine) as s:
        add_window("north", session=s, ctx=make_ctx(), actor="t", cron="0 * * * *", until=at(0, day=30))
    with selected_engine.begin() as connection:
        connection.exec_driver_sql("UPDATE rollout_windows SET cron = 'broken'")
    with session_scope(selected_engine) as s:
        snapshot = load_snapshot(session=s, now=clock())
    assert "north" not in snapshot.windows


@pytest.mark.slow
def test_a_promotion_from_another_process_reaches_a_running_policy_within_ten_seconds(
    tmp_path, monitor_config, database_url, selected_engine
):
    """`rollout promote` in its own process; the refresher of a running policy sees it."""
    config_file = tmp_path / "monitor.yaml"
    data = monitor_config.model_dump(mode="json", exclude_none=True)
    data["database"] = database_url  # the database of selected_engine
    config_file.write_text(yaml.safe_dump(data))
    with session_scope(selected_engine) as s:
        sync_sites_and_cameras(monitor_config, session=s)
    policy = StagePolicy(rng=FixedRng(NEVER))
    refresher = PolicyRefresher(policy, selected_engine, interval=2.0)  # the default refresh_interval
    refresher.start()
    try:
        assert policy.stage_of("north") is Stage.MANUAL
        command = [sys.executable, "-m", "rollout.cli", "promote", "north", "-c", str(config_file),
                   "--force", "--reason", "pilot starts", "--by", "ranger"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        assert done.returncode == 0, done.stderr
        changed = time.monotonic()
        while policy.stage_of("north") is not Stage.LIMITED and time.monotonic() - changed < 10:
            time.sleep(0.05)
        seen_after = time.monotonic() - changed
    finally:
        refresher.stop()
    assert policy.stage_of("north") is Stage.LIMITED
    assert seen_after < 10
