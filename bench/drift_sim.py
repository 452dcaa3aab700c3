"""Alert-rate drift detection on simulated Poisson alert streams: ours vs a fixed threshold.

For each base rate (alert episodes per day, 1 to 50) this simulates one camera: a
manual-stage baseline of ``--baseline-days`` days, then two weeks more at the same rate
(so every window is full), then either no change for a year, or the rate doubling, or
halving. Stills are classified at a constant rate (one every 5 s), so the exposure of
the rate test is time.

* **ours** is the drift detector's rate rule itself (:func:`monitor.drift.rate_verdict`,
  the default ``drift:`` config: windows 1d/3d/7d/14d, exact conditional Poisson test at
  a shared level of 0.0003, flagged only beyond 1.5x / 0.67x), evaluated every hour; a
  flag closes after 24 evaluations without its condition, as in the detector.
* **fixed** is the naive rule: once a day, the last day's count over the baseline's
  mean daily count; a flag when outside [0.5, 2].

Printed per base rate: the median days from the change to the first flag of the right
direction (``>60`` when most runs had none within 60 days), the share of doublings
flagged within 3 days, and the false flags (flags opened) per camera-year without any
change. Target at 10 alerts/day: a doubling flagged within 3 days (median), at most one
false flag per camera-year.

    .venv/bin/python bench/drift_sim.py [--rates 1 2 5 10 20 50] [--runs 100] [--years 100] [--seed 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from monitor.drift import rate_verdict, window_label  # noqa: E402
from monitor.observe_config import DriftConfig  # noqa: E402

STILLS_PER_HOUR = 720  # one every 5 s
HORIZON_DAYS = 60  # how long a change is watched for a flag


class Ours:
    """The detector's rate rule on an hourly stream, with its open/close bookkeeping."""

    def __init__(self, config: DriftConfig) -> None:
        self.config = config
        self.window_hours = [int(seconds // 3600) for seconds in sorted(config.windows)]
        self.labels = [window_label(seconds) for seconds in sorted(config.windows)]
        self.interval_hours = max(1, int(config.interval // 3600))
        self.clear_hours = self.interval_hours * config.clear_after

    def run(self, hourly: np.ndarray, baseline_events: int, baseline_hours: int, start: int):
        """Yield (hour, direction) for each flag opened, evaluating from hour ``start``."""
        cumulative = np.concatenate([[0], np.cumsum(hourly)])
        base_exposure = baseline_hours * STILLS_PER_HOUR
        open_direction: str | None = None
        last_seen = -10**9
        for hour in range(start, len(hourly) + 1, self.interval_hours):
            windows = [
                (label, int(cumulative[hour] - cumulative[hour - size]), size * STILLS_PER_HOUR)
                for label, size in zip(self.labels, self.window_hours)
            ]
            _, flagged = rate_verdict(windows, baseline_events, base_exposure, self.config)
            direction = flagged[1].direction if flagged else None
            if open_direction is not None and direction != open_direction and hour - last_seen >= self.clear_hours:
                open_direction = None
            if direction is not None:
                if direction != open_direction:
                    open_direction = direction
                    yield hour, direction
                last_seen = hour


def fixed_rule(daily: np.ndarray, baseline_mean: float, start_day: int):
    """Yield (day, direction) for each flag the fixed-threshold rule opens (a flagged day after an unflagged one)."""
    previous = None
    for day in range(start_day, len(daily)):
        ratio = daily[day] / baseline_mean if baseline_mean > 0 else 1.0
        direction = "up" if ratio > 2 else "down" if ratio < 0.5 else None
        if direction is not None and direction != previous:
            yield day + 1, direction  # known at the end of the day
        previous = direction


def simulate(rate: float, change: float, days_after: int, rng: np.random.Generator, ours: Ours,
             baseline_days: int) -> tuple[list, list]:
    """One camera: baseline, 14 quiet days, then ``days_after`` days at ``change`` x the rate.

    Returns:
        (flags of ours as (days since the change, direction), the same for the fixed rule).
    """
    warmup = 14
    per_hour = rate / 24
    baseline = rng.poisson(per_hour, baseline_days * 24)
    before = rng.poisson(per_hour, warmup * 24)
    after = rng.poisson(per_hour * change, days_after * 24)
    stream = np.concatenate([before, after])
    start = warmup * 24
    ours_flags = [((hour - start) / 24, d) for hour, d in ours.run(stream, int(baseline.sum()), baseline_days * 24,
                                                                  start + ours.interval_hours)]
    daily = stream.reshape(-1, 24).sum(axis=1)
    baseline_mean = baseline.sum() / baseline_days
    fixed_flags = [(day - warmup, d) for day, d in fixed_rule(daily, baseline_mean, warmup)]
    return ours_flags, fixed_flags


def first_delay(flags: list, direction: str) -> float:
    return next((t for t, d in flags if d == direction), float("inf"))


def median_days(delays: list[float]) -> str:
    value = statistics.median(delays)
    return f">{HORIZON_DAYS}" if value == float("inf") else f"{value:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[1, 2, 5, 10, 20, 50], help="alert episodes per day")
    parser.add_argument("--runs", type=int, default=100, help="simulated changes per rate and direction")
    parser.add_argument("--years", type=int, default=100, help="camera-years without change per rate")
    parser.add_argument("--baseline-days", type=int, default=28, help="length of the manual-stage baseline")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    config = DriftConfig()
    ours = Ours(config)
    print(f"ours: windows {'/'.join(ours.labels)}, alpha {config.rate_alpha:g} shared, beyond "
          f"{config.rate_ratio_up:g}x / {config.rate_ratio_down:g}x, evaluated every {ours.interval_hours}h; "
          f"fixed: last day / baseline outside [0.5, 2], daily. Baseline {args.baseline_days} days; "
          f"{args.runs} changes per cell, {args.years} camera-years for false flags.")
    header = (f"{'alerts/day':>10} | {'ours 2x (days)':>14} {'<=3d':>5} {'0.5x (days)':>11} {'false/yr':>8} | "
              f"{'fixed 2x (days)':>15} {'<=3d':>5} {'0.5x (days)':>11} {'false/yr':>8}")
    print(header)
    print("-" * len(header))
    rng = np.random.default_rng(args.seed)
    target = None
    for rate in args.rates:
        started = time.perf_counter()
        cells = {}
        for name, change in (("up", 2.0), ("down", 0.5)):
            ours_delays, fixed_delays = [], []
            for _ in range(args.runs):
                ours_flags, fixed_flags = simulate(rate, change, HORIZON_DAYS, rng, ours, args.baseline_days)
                ours_delays.append(first_delay(ours_flags, name))
                fixed_delays.append(first_delay(fixed_flags, name))
            cells[name] = (ours_delays, fixed_delays)
        ours_false = fixed_false = 0
        for _ in range(args.years):
            ours_flags, fixed_flags = simulate(rate, 1.0, 365, rng, ours, args.baseline_days)
            ours_false += len(ours_flags)
            fixed_false += len(fixed_flags)
        up_ours, up_fixed = cells["up"]
        within = lambda delays: sum(d <= 3 for d in delays) / len(delays)  # noqa: E731
        print(f"{rate:>10g} | {median_days(up_ours):>14} {within(up_ours):>5.0%} {median_days(cells['down'][0]):>11} "
              f"{ours_false / args.years:>8.2f} | {median_days(up_fixed):>15} {within(up_fixed):>5.0%} "
              f"{median_days(cells['down'][1]):>11} {fixed_false / args.years:>8.2f}"
              f"   ({time.perf_counter() - started:.0f} s)", flush=True)
        if rate == 10:
            target = (statistics.median(up_ours), ours_false / args.years)
    if target is not None:
        met = target[0] <= 3 and target[1] <= 1
        print(f"target at 10/day (doubling flagged within 3 days, <= 1 false flag per camera-year): "
              f"{'met' if met else 'NOT met'} ({target[0]:.1f} days, {target[1]:.2f} per camera-year)")


if __name__ == "__main__":
    main()
