"""Drift detection: each site and camera against its baseline, on a schedule.

Responsible for deciding, from the hourly counts the store keeps, whether a scope (one
camera, or a site's cameras pooled) has drifted from its baseline, and for keeping the
drift flags (``drift_flags`` table) that say so, with when each opened and closed. Flags
are exported on /metrics, listed on the overview page and in `rollout status`, and fail
the rollout's ``drift`` gate (:func:`monitor.store.observe.drift_flag_provider`).

The baseline is the site's manual-stage period (the time people reviewed every
positive), or ``drift.reference`` when configured, always ending where the longest
window begins, so the baseline never contains the data it is compared with.

Four questions, each with a minimum amount of data before it is asked:

* **Alert rate** (``rate_up`` / ``rate_down``): alert episodes per classified still in
  each window against the baseline, by the exact conditional test of a Poisson rate
  ratio (given both counts, the window's count is binomial; the tails come from
  :mod:`monitor.stats`). A change is flagged when the ratio is at least
  ``rate_ratio_up`` (or at most ``rate_ratio_down``) *and* significant at
  ``rate_alpha`` shared among the windows (Bonferroni). Episodes, not positive stills,
  are counted: a bear in view for a minute gives a dozen positives, which are one event.
* **Confidence** (``confidence``): population stability index of the confidence
  histogram (tenths) against the baseline's; above ``confidence_psi_max`` it flags.
* **Class mix** (``class_mix``): chi-square test of homogeneity of the predicted labels;
  flags when significant *and* the total variation distance reaches
  ``class_mix_min_distance`` (thousands of correlated stills make any difference
  "significant", so an effect size must be reached too).
* **Out-of-domain share** (``out_of_domain``): flags when the share of stills with an
  out-of-domain signal is ``ood_ratio_max`` times the baseline's and at least
  ``ood_min_increase`` higher. No significance test: out-of-domain stills come in runs
  (a whole night is grey), so counts are far from independent.

A flag closes once its condition has not been seen for ``clear_after`` evaluations.
``bench/drift_sim.py`` measures the alert-rate rule on simulated Poisson streams.

With many `monitor run --worker` processes on one database, only one runs the detector:
the one holding the ``drift`` job lease (:mod:`monitor.job_lease`), passed in as
``leader``. The others skip their scheduled evaluations and export no drift numbers;
when the holder dies, another worker takes the lease over and evaluates at once. A
single process without ``leader`` always evaluates.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Protocol

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy.engine import Engine
from sqlmodel import Session

from monitor.metrics import DriftNumbers
from monitor.observe_config import DriftConfig
from monitor.store.db import session_scope
from monitor.store.observe import Counts, Period, close_quiet_flags, open_flags, scope_counts, see_flag
from monitor.store.tables import DriftKind, utc_hour
from monitor.stats import binom_cdf, binom_sf, chi2_sf

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
BaselinePeriods = Callable[[Session, str], Sequence[Period]]
"""(session, site id) -> the site's baseline periods (its manual-stage periods)."""

# PSI divides by bucket shares; an empty bucket gets this share instead of zero.
_PSI_FLOOR = 1e-4
# Chi-square needs expected counts of about 5 per cell; rarer labels are pooled.
_MIN_EXPECTED_CELL = 5.0
_OTHER = "(other)"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Leadership(Protocol):
    """Whether this process runs the detector (a :class:`monitor.job_lease.JobLease`)."""

    def holds(self) -> bool:
        """This process holds the job now (no database access)."""
        ...

    def confirm(self, session: Session) -> bool:
        """Inside the evaluation's transaction: the job is still this process's."""
        ...


class NotLeader(Exception):
    """Another worker runs the drift detector; this one must not evaluate."""


# ---------------------------------------------------------------- the statistics, pure


@dataclass(frozen=True, slots=True)
class RateChange:
    """One window's alert rate against the baseline.

    Attributes:
        ratio: window rate over baseline rate; None when the baseline has no rate.
        expected: episodes the window would hold at the baseline rate.
        p_up: P(this many episodes or more | no change); 1.0 when the ratio is below
            ``ratio_up`` (it could not flag, so the tail is not computed).
        p_down: P(this few or fewer | no change); 1.0 when above ``ratio_down``.
        tested: the window and baseline held enough data to be tested.
        direction: "up", "down" or None: what this window flags.
    """

    ratio: float | None
    expected: float
    p_up: float = 1.0
    p_down: float = 1.0
    tested: bool = False
    direction: str | None = None


def rate_change(
    events: int,
    exposure: float,
    baseline_events: int,
    baseline_exposure: float,
    *,
    alpha: float,
    ratio_up: float,
    ratio_down: float,
    min_expected: float,
    min_baseline: int,
) -> RateChange:
    """Test one window's event rate against the baseline's (exact conditional test).

    Given both counts, the window's count is Binomial(total, pi) with
    pi = E1 / (E1 + E0) when the rates are equal; its tails are the one-sided p-values.

    Args:
        events: episodes in the window (k1).
        exposure: classified stills in the window (E1).
        baseline_events: episodes in the baseline (k0).
        baseline_exposure: classified stills in the baseline (E0).
        alpha: one-sided significance level for this window.
        ratio_up: smallest ratio flagged as an increase.
        ratio_down: largest ratio flagged as a decrease.
        min_expected: episodes the window must expect at the baseline rate to be tested.
        min_baseline: episodes the baseline must hold.

    Returns:
        The ratio, p-values and verdict.

    Raises:
        ValueError: negative counts.
    """
    if min(events, baseline_events) < 0 or min(exposure, baseline_exposure) < 0:
        raise ValueError("counts and exposures must not be negative")
    if exposure <= 0 or baseline_exposure <= 0:
        return RateChange(None, 0.0)
    expected = baseline_events * exposure / baseline_exposure
    ratio = events / expected if expected > 0 else None
    if baseline_events < min_baseline or expected < min_expected or ratio is None:
        return RateChange(ratio, expected)
    total = events + baseline_events
    share = exposure / (exposure + baseline_exposure)
    p_up = binom_sf(events, total, share) if ratio >= ratio_up else 1.0
    p_down = binom_cdf(events, total, share) if ratio <= ratio_down else 1.0
    direction = "up" if p_up < alpha else "down" if p_down < alpha else None
    return RateChange(ratio, expected, p_up, p_down, True, direction)


def population_stability_index(baseline: Sequence[int], current: Sequence[int]) -> float:
    """PSI = sum over buckets of (q - p) * ln(q / p), shares p (baseline) and q (current).

    0 for equal distributions; 0.1 is commonly read as a moderate shift, 0.25 as large.
    Empty buckets get a tiny share so the logarithm stays finite.

    Raises:
        ValueError: different numbers of buckets, or an empty histogram.
    """
    if len(baseline) != len(current):
        raise ValueError("histograms need the same buckets")
    base_total, current_total = sum(baseline), sum(current)
    if base_total <= 0 or current_total <= 0:
        raise ValueError("histograms must not be empty")
    psi = 0.0
    for b, c in zip(baseline, current):
        p = max(b / base_total, _PSI_FLOOR)
        q = max(c / current_total, _PSI_FLOOR)
        psi += (q - p) * math.log(q / p)
    return psi


@dataclass(frozen=True, slots=True)
class MixChange:
    """The class mix of a window against the baseline's.

    Attributes:
        statistic: chi-square statistic of homogeneity (2 x labels table).
        dof: its degrees of freedom (0 when fewer than two labels remain).
        p_value: P(a statistic this large | the same mix).
        distance: total variation distance of the two label distributions, in [0, 1].
    """

    statistic: float
    dof: int
    p_value: float
    distance: float


def class_mix_change(baseline: Mapping[str, int], current: Mapping[str, int]) -> MixChange:
    """Chi-square test of homogeneity of two label counts, and their distance.

    Labels whose expected count is below 5 in either row are pooled into one cell
    (the chi-square approximation needs it).

    Raises:
        ValueError: an empty side.
    """
    base_total, current_total = sum(baseline.values()), sum(current.values())
    if base_total <= 0 or current_total <= 0:
        raise ValueError("both label counts must hold predictions")
    labels = sorted(set(baseline) | set(current))
    distance = 0.5 * sum(abs(baseline.get(k, 0) / base_total - current.get(k, 0) / current_total) for k in labels)
    total = base_total + current_total
    cells: dict[str, list[int]] = {}
    for label in labels:
        b, c = baseline.get(label, 0), current.get(label, 0)
        column = b + c
        rare = min(column * base_total / total, column * current_total / total) < _MIN_EXPECTED_CELL
        key = _OTHER if rare else label
        cell = cells.setdefault(key, [0, 0])
        cell[0] += b
        cell[1] += c
    if len(cells) < 2:
        return MixChange(0.0, 0, 1.0, distance)
    statistic = 0.0
    for b, c in cells.values():
        column = b + c
        for observed, row in ((b, base_total), (c, current_total)):
            expected = column * row / total
            if expected > 0:
                statistic += (observed - expected) ** 2 / expected
    dof = len(cells) - 1
    return MixChange(statistic, dof, chi2_sf(statistic, dof), distance)


def window_label(seconds: float) -> str:
    """A window's name for metric labels and details: 1d, 3d, 6h, 90m."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


@dataclass(frozen=True, slots=True)
class Finding:
    """One kind of drift in one scope at one evaluation.

    Attributes:
        active: the condition holds now (a flag opens or stays open).
        statistic: the number behind it (ratio, PSI, distance, OOD ratio); None if untested.
        detail: one line with the numbers, for people.
    """

    active: bool
    statistic: float | None
    detail: str


@dataclass
class ScopeResult:
    """Everything one evaluation of a scope found.

    Attributes:
        site_id: the site.
        camera_id: the camera; None for the site's cameras pooled.
        findings: drift kind value -> its finding (only the kinds that could be judged).
        rate_ratios: window label -> alert-rate ratio (None when the baseline has no rate).
        baseline_rate: baseline episodes per classified still; None without a baseline.
        psi: confidence PSI of the shortest window with enough stills.
        mix_distance: class-mix distance of that window.
        ood_ratio: out-of-domain share over the baseline's share, for that window.
        baseline: the baseline's counts.
    """

    site_id: str
    camera_id: str | None
    findings: dict[str, Finding] = field(default_factory=dict)
    rate_ratios: dict[str, float | None] = field(default_factory=dict)
    baseline_rate: float | None = None
    psi: float | None = None
    mix_distance: float | None = None
    ood_ratio: float | None = None
    baseline: Counts = field(default_factory=Counts)


def judge(
    site_id: str,
    camera_id: str | None,
    windows: Sequence[tuple[str, Counts]],
    baseline: Counts,
    config: DriftConfig,
) -> ScopeResult:
    """Judge a scope's windows against its baseline (pure: no database, no clock).

    Args:
        site_id: the site.
        camera_id: the camera, or None for the site pooled.
        windows: (label, counts) per window, shortest first.
        baseline: the baseline's counts.
        config: thresholds and levels.

    Returns:
        The findings and statistics.
    """
    result = ScopeResult(site_id, camera_id, baseline=baseline)
    if baseline.frames > 0:
        result.baseline_rate = baseline.episodes / baseline.frames
    _judge_rate(result, windows, baseline, config)
    _judge_distributions(result, windows, baseline, config)
    return result


def rate_verdict(
    windows: Sequence[tuple[str, int, float]], baseline_events: int, baseline_exposure: float, config: DriftConfig
) -> tuple[dict[str, RateChange], tuple[str, RateChange] | None]:
    """Test every window's alert rate against the baseline, sharing ``rate_alpha`` among them.

    Args:
        windows: (label, episodes, classified stills) per window, shortest first.
        baseline_events: the baseline's episodes.
        baseline_exposure: the baseline's classified stills.
        config: levels and minimum counts.

    Returns:
        Every window's test by label, and the first (shortest) window that flags with its
        test, or None when none does.
    """
    alpha = config.rate_alpha / len(windows)
    changes: dict[str, RateChange] = {}
    flagged: tuple[str, RateChange] | None = None
    for label, events, exposure in windows:
        change = rate_change(
            events, exposure, baseline_events, baseline_exposure, alpha=alpha,
            ratio_up=config.rate_ratio_up, ratio_down=config.rate_ratio_down,
            min_expected=config.min_expected_alerts, min_baseline=config.min_baseline_alerts,
        )
        changes[label] = change
        if flagged is None and change.direction is not None:
            flagged = (label, change)
    return changes, flagged


def _judge_rate(result: ScopeResult, windows: Sequence[tuple[str, Counts]], baseline: Counts, config: DriftConfig) -> None:
    changes, flagged = rate_verdict(
        [(label, counts.episodes, counts.frames) for label, counts in windows], baseline.episodes, baseline.frames,
        config,
    )
    result.rate_ratios = {label: change.ratio for label, change in changes.items()}
    if not any(change.tested for change in changes.values()):
        return
    for kind, direction in ((DriftKind.RATE_UP, "up"), (DriftKind.RATE_DOWN, "down")):
        if flagged is not None and flagged[1].direction == direction:
            label, change = flagged
            p = change.p_up if direction == "up" else change.p_down
            counts = dict(windows)[label]
            detail = (
                f"alert rate x{change.ratio:.2f} over {label} ({counts.episodes} episodes, "
                f"{change.expected:.1f} expected at baseline; p={p:.1e})"
            )
            result.findings[kind.value] = Finding(True, change.ratio, detail)
        else:
            result.findings[kind.value] = Finding(False, None, "")


def _judge_distributions(
    result: ScopeResult, windows: Sequence[tuple[str, Counts]], baseline: Counts, config: DriftConfig
) -> None:
    if baseline.frames < config.min_predictions:
        return
    alpha = config.class_mix_alpha / len(windows)
    confidence = mix = ood = None
    for label, counts in windows:
        if counts.frames < config.min_predictions:
            continue
        psi = population_stability_index(baseline.confidence, counts.confidence)
        change = class_mix_change(baseline.labels, counts.labels)
        base_share = baseline.out_of_domain / baseline.frames
        share = counts.out_of_domain / counts.frames
        # A baseline without out-of-domain stills: compare with one still's share instead of zero.
        ood_ratio = share / max(base_share, 1.0 / baseline.frames)
        if result.psi is None:
            result.psi, result.mix_distance, result.ood_ratio = psi, change.distance, ood_ratio
        if confidence is None and psi > config.confidence_psi_max:
            confidence = Finding(True, psi, f"confidence PSI {psi:.2f} over {label} ({counts.frames} stills)")
        if mix is None and change.p_value < alpha and change.distance >= config.class_mix_min_distance:
            mix = Finding(True, change.distance, (
                f"class mix moved {change.distance:.2f} (total variation) over {label}; "
                f"chi-square {change.statistic:.0f} on {change.dof} df, p={change.p_value:.1e}"
            ))
        if ood is None and ood_ratio >= config.ood_ratio_max and share - base_share >= config.ood_min_increase:
            ood = Finding(True, ood_ratio, (
                f"out-of-domain share {share:.0%} over {label} vs {base_share:.0%} in the baseline"
            ))
    if result.psi is None:
        return  # no window had enough stills: nothing judged, nothing closes
    result.findings[DriftKind.CONFIDENCE.value] = confidence or Finding(False, result.psi, "")
    result.findings[DriftKind.CLASS_MIX.value] = mix or Finding(False, result.mix_distance, "")
    result.findings[DriftKind.OUT_OF_DOMAIN.value] = ood or Finding(False, result.ood_ratio, "")


# ---------------------------------------------------------------- the detector


class DriftDetector:
    """Evaluates every site and camera against its baseline and keeps the drift flags.

    One APScheduler interval job per scope (each camera, and each site with more than one
    camera, pooled), run one at a time on a single worker thread so the database sees
    one evaluation at a time; the first run is at start.

    Args:
        engine: the store's engine.
        config: the ``drift:`` config section.
        sites: site id -> its camera ids.
        baseline_periods: (session, site id) -> the site's manual-stage periods; None
            uses all data before the windows (only when no rollout is wired).
        clock: the current time (aware); injectable for tests.
        leader: with many workers, the drift job's lease: evaluations run only while
            it is held, and write only while the database confirms it. None: always.
    """

    def __init__(
        self,
        engine: Engine,
        config: DriftConfig,
        sites: Mapping[str, Sequence[str]],
        *,
        baseline_periods: BaselinePeriods | None = None,
        clock: Clock = utcnow,
        leader: Leadership | None = None,
    ) -> None:
        self._engine = engine
        self.config = config
        self._sites = {site: list(cameras) for site, cameras in sites.items()}
        self._baseline_periods = baseline_periods
        self._clock = clock
        self._leader = leader
        self._lock = threading.Lock()
        self._results: dict[tuple[str, str | None], ScopeResult] = {}
        self._open: dict[tuple[str, str | None], set[str]] = {}
        self._runs = {"ok": 0, "error": 0}
        self._last_run: float | None = None
        self._scheduler: BackgroundScheduler | None = None

    def scopes(self) -> list[tuple[str, str | None]]:
        """Every (site, camera) evaluated; camera None is the site's cameras pooled."""
        scopes: list[tuple[str, str | None]] = []
        for site_id, cameras in self._sites.items():
            scopes += [(site_id, camera_id) for camera_id in cameras]
            if len(cameras) > 1:
                scopes.append((site_id, None))
        return scopes

    def _periods(self, session: Session, site_id: str, now: datetime) -> list[Period]:
        # The baseline ends where the longest window starts (on an hour: counts are hourly).
        cutoff = utc_hour(now - timedelta(seconds=self.config.longest_window))
        if self.config.reference is not None:
            raw: Sequence[Period] = [(self.config.reference.start, self.config.reference.end)]
        elif self._baseline_periods is not None:
            raw = self._baseline_periods(session, site_id)
        else:
            raw = [(None, None)]
        periods = []
        for start, end in raw:
            end = cutoff if end is None else min(end, cutoff)
            if start is None or start < end:
                periods.append((start, end))
        return periods

    def evaluate(self, site_id: str, camera_id: str | None) -> ScopeResult:
        """Evaluate one scope now, open/refresh/close its flags and commit.

        Args:
            site_id: the site.
            camera_id: one of its cameras, or None for all of them pooled.

        Returns:
            What was found.

        Raises:
            NotLeader: a ``leader`` was given and another worker runs the detector.
            StoreError, SQLAlchemyError: the database failed (nothing was changed).
        """
        now = self._clock()
        cameras = [camera_id] if camera_id is not None else self._sites[site_id]
        with session_scope(self._engine) as session:
            # First, so that (on PostgreSQL) the lease stays locked until this commits.
            if self._leader is not None and not self._leader.confirm(session):
                raise NotLeader(f"another worker runs the drift detector (site {site_id})")
            periods = self._periods(session, site_id, now)
            baseline = scope_counts(cameras, periods, session=session)
            windows = [
                (window_label(seconds), scope_counts(cameras, [(now - timedelta(seconds=seconds), now)], session=session))
                for seconds in sorted(self.config.windows)
            ]
            result = judge(site_id, camera_id, windows, baseline, self.config)
            quiet = timedelta(seconds=self.config.interval * self.config.clear_after)
            for kind, finding in result.findings.items():
                if finding.active:
                    _, opened = see_flag(session=session, site_id=site_id, camera_id=camera_id, kind=kind, now=now,
                                         statistic=finding.statistic, detail=finding.detail)
                    if opened:
                        log.warning("drift flag opened: site %s %s %s: %s", site_id,
                                    f"camera {camera_id}" if camera_id else "(all cameras)", kind, finding.detail)
            close_quiet_flags(session=session, site_id=site_id, camera_id=camera_id,
                              kinds=[k for k, f in result.findings.items() if not f.active], now=now, quiet=quiet)
            session.commit()
            still_open = {
                flag.kind for flag in open_flags(session=session, site_id=site_id) if flag.camera_id == camera_id
            }
        with self._lock:
            self._results[(site_id, camera_id)] = result
            self._open[(site_id, camera_id)] = still_open
        return result

    def evaluate_all(self) -> list[ScopeResult]:
        """Evaluate every scope once, now (tests, `monitor` commands)."""
        return [self.evaluate(site_id, camera_id) for site_id, camera_id in self.scopes()]

    def _job(self, site_id: str, camera_id: str | None) -> None:
        if self._leader is not None and not self._leader.holds():
            self.forget()
            return
        try:
            self.evaluate(site_id, camera_id)
        except NotLeader:
            self.forget()
            return
        except Exception as exc:  # one failed evaluation must not end the schedule
            with self._lock:
                self._runs["error"] += 1
            log.error("drift evaluation of site %s camera %s failed: %s", site_id, camera_id or "(all)", exc)
            log.debug("drift evaluation failure", exc_info=True)
            return
        with self._lock:
            self._runs["ok"] += 1
            self._last_run = time.time()

    def start(self) -> None:
        """Schedule one interval job per scope; the first runs start now."""
        scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(1)}, timezone=timezone.utc,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        now = datetime.now(timezone.utc)
        for site_id, camera_id in self.scopes():
            scheduler.add_job(
                self._job, "interval", seconds=self.config.interval, args=(site_id, camera_id),
                id=f"drift:{site_id}:{camera_id or '*'}", next_run_time=now,
            )
        scheduler.start()
        self._scheduler = scheduler

    def stop(self) -> None:
        """Stop the schedule; an evaluation in progress finishes first."""
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
            self._scheduler = None

    def run_soon(self) -> None:
        """Evaluate every scope now instead of at its next interval (this worker just became leader)."""
        scheduler = self._scheduler
        if scheduler is None:
            return
        now = datetime.now(timezone.utc)
        for job in scheduler.get_jobs():
            try:
                job.modify(next_run_time=now)
            except Exception:  # the scheduler may be shutting down
                log.debug("could not reschedule %s", job.id, exc_info=True)

    def forget(self) -> None:
        """Drop this process's results: another worker runs the detector, and /metrics must
        not keep showing numbers this one no longer updates."""
        with self._lock:
            self._results.clear()
            self._open.clear()

    def is_leader(self) -> bool:
        """Whether this process runs the detector now (always, without a ``leader``)."""
        return self._leader is None or self._leader.holds()

    def numbers(self) -> DriftNumbers:
        """The latest results of this process, for /metrics; none while another worker runs the detector."""
        numbers = DriftNumbers(leader=self.is_leader())
        with self._lock:
            results = self._results.items() if numbers.leader else ()
            for (site_id, camera_id), result in results:
                camera = camera_id or ""
                opened = self._open.get((site_id, camera_id), set())
                for kind in DriftKind:
                    if kind.value in result.findings or kind.value in opened:
                        numbers.flags[(site_id, camera, kind.value)] = 1.0 if kind.value in opened else 0.0
                for label, ratio in result.rate_ratios.items():
                    if ratio is not None:
                        numbers.rate_ratio[(site_id, camera, label)] = ratio
                for target, value in ((numbers.baseline_rate, result.baseline_rate),
                                      (numbers.confidence_psi, result.psi),
                                      (numbers.class_mix_distance, result.mix_distance),
                                      (numbers.ood_ratio, result.ood_ratio)):
                    if value is not None:
                        target[(site_id, camera)] = value
            numbers.last_run = self._last_run
            numbers.runs = dict(self._runs)
        return numbers


class Cached:
    """Calls ``read`` at most once every ``seconds`` and returns the last value between.

    /metrics may be scraped every second by several Prometheus servers; the numbers
    behind it come from the database and need not be fresher than a few seconds. A
    failed read returns the previous value (or ``fallback``) and is logged.

    Args:
        read: produces the value.
        seconds: how long a value is served.
        fallback: served when the first read fails.
    """

    def __init__(self, read: Callable[[], object], seconds: float, fallback: object) -> None:
        self._read = read
        self._seconds = seconds
        self._value = fallback
        self._at: float | None = None
        self._lock = threading.Lock()

    def __call__(self):
        with self._lock:
            now = time.monotonic()
            if self._at is None or now - self._at >= self._seconds:
                try:
                    self._value = self._read()
                except Exception as exc:
                    log.warning("could not read metrics from the database: %s", exc)
                    log.debug("metrics read failure", exc_info=True)
                self._at = now
            return self._value
