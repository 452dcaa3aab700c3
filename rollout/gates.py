"""Promotion gates: PASS, FAIL or INSUFFICIENT DATA, each with the numbers behind it.

Responsible for turning a site's reviews and hourly counts into a verdict per gate and
one report. Every gate decides on a confidence bound, never a bare point estimate, so:

* PASS   the bound clears the target (and the minimum amount of data is there);
* FAIL   the data says, significantly, that the target is missed (the opposite bound is
         on the wrong side) - this is what automatic rollback acts on;
* INSUFFICIENT DATA  anything else: too little data, or an interval straddling the
         target. Sparse data can therefore never pass.

The gates:

* ``reviewed``    decided review items in the stage >= ``min_reviewed`` (never FAIL).
* ``days``        days in the stage >= the stage's minimum (never FAIL).
* ``precision``   Wilson lower bound of approved / decided positives >= target.
                  A relabel counts as not approved (the model's label was wrong), as in
                  the review stats.
* ``misses``      Clopper-Pearson upper bound of bears found among decided negative
                  samples <= target. A negative sample is a miss when the reviewer says
                  a bear is there: approved with an alert label (a bear below the
                  threshold) or relabelled to an alert label. A rejection gives no label,
                  so it is decided but not a miss.
* ``alert_rate``  positives per classified still now, over the same rate in the site's
                  manual-stage periods (the baseline), with the exact conditional
                  (binomial) test of a Poisson rate ratio: PASS when the whole 95%
                  interval of the ratio lies inside [0.5, 2], FAIL when it lies wholly
                  outside (significantly outside the band). An exactly doubled rate sits
                  on the edge: it never passes, and it fails only once the data shows it
                  is significantly above 2. At the manual stage itself the gate only
                  checks that the baseline holds enough positives.
* ``drift``       no open drift flags (from a provider the metrics issue will supply;
                  with none wired it passes and says so).

Which reviews count: only random samples estimate rates without bias, so precision
uses items queued as ``positive`` plus audit items that were positive, and misses use
``negative_sample`` items plus audit items that were not; ``out_of_domain`` items were
chosen for being doubtful and are only counted, not used.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import Session

from monitor.store.tables import ReviewStatus
from monitor.types import DEFAULT_ALERT_LABELS, QueueReason
from rollout import store
from rollout.config import GatesConfig
from rollout.stages import Stage
from monitor.stats import poisson_rate_ratio, wilson_interval, clopper_pearson_interval

DriftFlagProvider = Callable[[str], Sequence[str]]
"""site id -> descriptions of the site's open drift flags (empty when none)."""

GATE_ORDER = ("reviewed", "days", "precision", "misses", "alert_rate", "drift")


class Verdict(str, enum.Enum):
    """The outcome of one gate, or of all of them."""

    PASS = "PASS"
    FAIL = "FAIL"
    INSUFFICIENT = "INSUFFICIENT DATA"


@dataclass(frozen=True)
class GateResult:
    """One gate's verdict.

    Attributes:
        name: one of :data:`GATE_ORDER`.
        verdict: PASS, FAIL or INSUFFICIENT DATA.
        detail: one line with the numbers, for tables and logs.
        numbers: the same numbers, JSON-safe (non-finite values become None).
    """

    name: str
    verdict: Verdict
    detail: str
    numbers: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GateReport:
    """Every gate of one site at one moment."""

    site_id: str
    stage: Stage
    since: datetime
    evaluated_at: datetime
    window_start: datetime
    results: tuple[GateResult, ...]

    @property
    def verdict(self) -> Verdict:
        """FAIL if any gate fails, PASS if all pass, else INSUFFICIENT DATA."""
        verdicts = {r.verdict for r in self.results}
        if Verdict.FAIL in verdicts:
            return Verdict.FAIL
        return Verdict.PASS if verdicts == {Verdict.PASS} else Verdict.INSUFFICIENT

    @property
    def passed(self) -> bool:
        return self.verdict is Verdict.PASS

    def not_passed(self) -> list[GateResult]:
        """The gates that did not pass, in gate order."""
        return [r for r in self.results if r.verdict is not Verdict.PASS]

    def summary(self) -> str:
        """One line: the overall verdict and the gates that did not pass."""
        rest = self.not_passed()
        if not rest:
            return "all gates PASS"
        return "; ".join(f"{r.name} {r.verdict.value}: {r.detail}" for r in rest)

    def to_evidence(self) -> dict[str, Any]:
        """The report as JSON for the audit log and the API."""
        return {
            "verdict": self.verdict.value,
            "stage": self.stage.value,
            "since": self.since.isoformat(),
            "evaluated_at": self.evaluated_at.isoformat(),
            "window_start": self.window_start.isoformat(),
            "gates": [
                {"name": r.name, "verdict": r.verdict.value, "detail": r.detail, "numbers": dict(r.numbers)}
                for r in self.results
            ],
        }


@dataclass(frozen=True)
class Positivity:
    """Decides, after the fact, whether a stored prediction was positive.

    Needed for audit items, which are queued whether positive or not.

    Attributes:
        alert_labels: labels that count as positive.
        default_threshold: confidence at or above which they do.
        thresholds: camera id -> its own threshold, where it has one.
    """

    alert_labels: frozenset[str] = frozenset(DEFAULT_ALERT_LABELS)
    default_threshold: float = 0.5
    thresholds: Mapping[str, float] = field(default_factory=dict)

    def is_positive(self, camera_id: str, label: str, confidence: float) -> bool:
        threshold = self.thresholds.get(camera_id, self.default_threshold)
        return label in self.alert_labels and confidence >= threshold

    def is_bear(self, label: str | None) -> bool:
        return label is not None and label in self.alert_labels

    @classmethod
    def from_config(cls, config: Any) -> "Positivity":
        """From a ``monitor.config.MonitorConfig`` (alert labels and thresholds)."""
        return cls(
            alert_labels=frozenset(config.alert_labels),
            default_threshold=float(config.threshold),
            thresholds={camera.id: config.threshold_for(camera) for _, camera in config.cameras()},
        )


@dataclass(frozen=True)
class Evidence:
    """Everything the gates judge, gathered from the database for one site."""

    stage: Stage
    since: datetime
    now: datetime
    window_start: datetime
    decided: int
    pending: int
    positives_decided: int
    positives_approved: int
    negatives_decided: int
    misses: int
    out_of_domain_decided: int
    positives: int
    predictions: int
    baseline_positives: int
    baseline_predictions: int
    baseline_hours: int
    drift_flags: tuple[str, ...] = ()
    drift_detector: bool = False

    @property
    def days_in_stage(self) -> float:
        return max(0.0, (self.now - self.since).total_seconds() / 86400.0)


# ---------------------------------------------------------------- the gates, pure


def _num(value: float | None, digits: int = 6) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


def gate_reviewed(decided: int, minimum: int, *, pending: int = 0) -> GateResult:
    """Enough decided review items in the stage (never FAIL: more reviews fix it)."""
    verdict = Verdict.PASS if decided >= minimum else Verdict.INSUFFICIENT
    return GateResult(
        "reviewed", verdict, f"{decided} decided (need {minimum}), {pending} pending",
        {"decided": decided, "required": minimum, "pending": pending},
    )


def gate_days(days: float, minimum: float) -> GateResult:
    """Enough days in the stage (never FAIL: time fixes it)."""
    verdict = Verdict.PASS if days >= minimum else Verdict.INSUFFICIENT
    return GateResult(
        "days", verdict, f"{days:.1f} days in stage (need {minimum:g})",
        {"days": _num(days, 3), "required": minimum},
    )


def gate_precision(approved: int, decided: int, *, target: float, minimum: int, confidence: float) -> GateResult:
    """Reviewed precision: the Wilson lower bound of approved / decided positives >= target."""
    interval = wilson_interval(approved, decided, confidence)
    numbers = {
        "approved": approved, "decided": decided, "precision": _num(interval.estimate),
        "lower": _num(interval.lower), "upper": _num(interval.upper), "target": target,
        "required": minimum, "confidence": confidence,
    }
    detail = (
        f"{approved}/{decided} approved = {_fmt(interval.estimate)}, "
        f"{confidence:.0%} interval [{_fmt(interval.lower)}, {_fmt(interval.upper)}], target lower >= {target:g}"
    )
    if decided > 0 and interval.upper < target:
        verdict = Verdict.FAIL
    elif decided >= minimum and interval.lower >= target:
        verdict = Verdict.PASS
    else:
        verdict = Verdict.INSUFFICIENT
        if decided < minimum:
            detail += f" (need {minimum} decided)"
    return GateResult("precision", verdict, detail, numbers)


def gate_misses(misses: int, decided: int, *, maximum: float, minimum: int, confidence: float) -> GateResult:
    """Misses: the Clopper-Pearson upper bound of bears among decided negative samples <= maximum."""
    interval = clopper_pearson_interval(misses, decided, confidence)
    numbers = {
        "misses": misses, "decided": decided, "miss_rate": _num(interval.estimate),
        "lower": _num(interval.lower), "upper": _num(interval.upper), "maximum": maximum,
        "required": minimum, "confidence": confidence,
    }
    detail = (
        f"{misses}/{decided} negatives were bears = {_fmt(interval.estimate, 4)}, "
        f"{confidence:.0%} interval [{_fmt(interval.lower, 4)}, {_fmt(interval.upper, 4)}], "
        f"target upper <= {maximum:g}"
    )
    if decided > 0 and interval.lower > maximum:
        verdict = Verdict.FAIL
    elif decided >= minimum and interval.upper <= maximum:
        verdict = Verdict.PASS
    else:
        verdict = Verdict.INSUFFICIENT
        if decided < minimum:
            detail += f" (need {minimum} decided)"
    return GateResult("misses", verdict, detail, numbers)


def gate_alert_rate(
    positives: int,
    predictions: int,
    baseline_positives: int,
    baseline_predictions: int,
    *,
    low: float,
    high: float,
    min_baseline: int,
    min_expected: float,
    confidence: float,
    baseline_stage: bool = False,
) -> GateResult:
    """The alert rate against the manual-stage baseline: ratio inside [low, high].

    Args:
        positives, predictions: the current period's positives and classified stills.
        baseline_positives, baseline_predictions: the same in the site's manual periods.
        low, high: the acceptable band of ratios.
        min_baseline: baseline positives needed before anything passes.
        min_expected: positives the current period would hold at the baseline rate
            before anything passes.
        confidence: two-sided level of the interval of the ratio.
        baseline_stage: the site is at manual, whose period *is* the baseline: only the
            baseline's size is judged.
    """
    baseline_rate = baseline_positives / baseline_predictions if baseline_predictions else None
    numbers: dict[str, Any] = {
        "positives": positives, "predictions": predictions,
        "rate": _num(positives / predictions if predictions else None, 8),
        "baseline_positives": baseline_positives, "baseline_predictions": baseline_predictions,
        "baseline_rate": _num(baseline_rate, 8), "band": [low, high],
        "min_baseline_positives": min_baseline, "min_expected_positives": min_expected,
    }
    if baseline_stage:
        detail = (
            f"manual baseline: {baseline_positives} positives in {baseline_predictions} stills "
            f"(rate {_fmt(baseline_rate, 5)}; need {min_baseline} positives)"
        )
        verdict = Verdict.PASS if baseline_positives >= min_baseline else Verdict.INSUFFICIENT
        return GateResult("alert_rate", verdict, detail, numbers)
    if not baseline_predictions or not predictions or not baseline_positives:
        detail = (
            f"{positives} positives in {predictions} stills vs baseline {baseline_positives} in "
            f"{baseline_predictions}: no rate to compare yet"
        )
        return GateResult("alert_rate", Verdict.INSUFFICIENT, detail, numbers)
    test = poisson_rate_ratio(
        positives, predictions, baseline_positives, baseline_predictions, low=low, high=high, confidence=confidence
    )
    expected = baseline_positives / baseline_predictions * predictions
    numbers.update(
        ratio=_num(test.ratio), lower=_num(test.lower), upper=_num(test.upper), expected=_num(expected, 3),
        p_above=_num(test.p_above, 8), p_below=_num(test.p_below, 8), confidence=confidence,
    )
    detail = (
        f"rate ratio {_fmt(test.ratio, 2)} ({positives} positives, {expected:.1f} expected at baseline), "
        f"{confidence:.0%} interval [{_fmt(test.lower, 2)}, {_fmt(test.upper, 2)}], band [{low:g}, {high:g}]"
    )
    if test.lower > high or test.upper < low:
        verdict = Verdict.FAIL
    elif low <= test.lower and test.upper <= high and baseline_positives >= min_baseline and expected >= min_expected:
        verdict = Verdict.PASS
    else:
        verdict = Verdict.INSUFFICIENT
        if baseline_positives < min_baseline:
            detail += f" (baseline needs {min_baseline} positives)"
        elif expected < min_expected:
            detail += f" (need {min_expected:g} expected positives)"
    return GateResult("alert_rate", verdict, detail, numbers)


def gate_drift(flags: Sequence[str], *, detector: bool) -> GateResult:
    """No open drift flags."""
    numbers = {"open_flags": len(flags), "flags": list(flags), "detector": detector}
    if flags:
        return GateResult("drift", Verdict.FAIL, f"{len(flags)} open drift flag(s): {'; '.join(flags)}", numbers)
    detail = "no open drift flags" if detector else "no open drift flags (no drift detector wired)"
    return GateResult("drift", Verdict.PASS, detail, numbers)


def judge(site_id: str, evidence: Evidence, gates: GatesConfig) -> GateReport:
    """Apply every gate to gathered evidence (pure; no database).

    Args:
        site_id: for the report.
        evidence: from :func:`gather_evidence` or built by hand in tests.
        gates: the thresholds.

    Returns:
        The report with one result per gate in :data:`GATE_ORDER`.
    """
    results = (
        gate_reviewed(evidence.decided, gates.min_reviewed, pending=evidence.pending),
        gate_days(evidence.days_in_stage, gates.min_days_for(evidence.stage)),
        gate_precision(
            evidence.positives_approved, evidence.positives_decided,
            target=gates.precision_target, minimum=gates.min_decided_positives, confidence=gates.confidence,
        ),
        gate_misses(
            evidence.misses, evidence.negatives_decided,
            maximum=gates.miss_rate_max, minimum=gates.min_decided_negatives, confidence=gates.confidence,
        ),
        gate_alert_rate(
            evidence.positives, evidence.predictions, evidence.baseline_positives, evidence.baseline_predictions,
            low=gates.rate_ratio_min, high=gates.rate_ratio_max, min_baseline=gates.min_baseline_positives,
            min_expected=gates.min_expected_positives, confidence=gates.confidence,
            baseline_stage=evidence.stage is Stage.MANUAL,
        ),
        gate_drift(evidence.drift_flags, detector=evidence.drift_detector),
    )
    return GateReport(
        site_id=site_id, stage=evidence.stage, since=evidence.since, evaluated_at=evidence.now,
        window_start=evidence.window_start, results=results,
    )


# ---------------------------------------------------------------- gathering evidence


def gather_evidence(
    site_id: str,
    *,
    session: Session,
    gates: GatesConfig,
    positivity: Positivity,
    now: datetime,
    drift_flags: DriftFlagProvider | None = None,
) -> Evidence:
    """Read what the gates need for one site from the database.

    Args:
        site_id: the site.
        session: an open session (read only; the site's stage row is added if missing).
        gates: for the evidence window.
        positivity: tells positive audit items from negative ones.
        now: aware current time.
        drift_flags: open drift flags per site; None when no detector is wired.

    Returns:
        The evidence for :func:`judge`.
    """
    state = store.ensure_states([site_id], session=session, now=now)[site_id]
    stage = Stage(state.stage)
    window_start = max(state.since, now - timedelta(seconds=gates.evidence_window))

    decided = positives_decided = approved = negatives_decided = misses = out_of_domain = 0
    for tally in store.review_tallies(site_id, session=session, start=window_start, end=now):
        decided += tally.count
        if tally.reason == QueueReason.POSITIVE.value:
            positives_decided += tally.count
            approved += tally.count if tally.status == ReviewStatus.APPROVED.value else 0
        elif tally.reason == QueueReason.NEGATIVE_SAMPLE.value:
            negatives_decided += tally.count
            misses += tally.count if _is_miss(tally.status, tally.label, tally.review_label, positivity) else 0
        else:
            out_of_domain += tally.count
    for row in store.audit_rows(site_id, session=session, start=window_start, end=now):
        decided += 1
        if positivity.is_positive(row.camera_id, row.label, row.confidence):
            positives_decided += 1
            approved += row.status == ReviewStatus.APPROVED.value
        else:
            negatives_decided += 1
            misses += _is_miss(row.status, row.label, row.review_label, positivity)
    pending = store.pending_count(site_id, session=session, start=window_start, end=now)

    current = store.rate_counts(site_id, session=session, periods=[(window_start, now)])
    manual = [
        (p.start, min(p.end, now) if p.end else now)
        for p in store.stage_periods(site_id, session=session)
        if p.stage is Stage.MANUAL
    ]
    baseline = store.rate_counts(site_id, session=session, periods=manual)
    flags = tuple(drift_flags(site_id)) if drift_flags is not None else ()
    return Evidence(
        stage=stage, since=state.since, now=now, window_start=window_start,
        decided=decided, pending=pending,
        positives_decided=positives_decided, positives_approved=int(approved),
        negatives_decided=negatives_decided, misses=int(misses), out_of_domain_decided=out_of_domain,
        positives=current.positives, predictions=current.predictions,
        baseline_positives=baseline.positives, baseline_predictions=baseline.predictions,
        baseline_hours=baseline.hours, drift_flags=flags, drift_detector=drift_flags is not None,
    )


def _is_miss(status: str, label: str, review_label: str | None, positivity: Positivity) -> bool:
    """A negative the reviewer says shows a bear."""
    if status == ReviewStatus.APPROVED.value:
        return positivity.is_bear(label)
    if status == ReviewStatus.RELABELLED.value:
        return positivity.is_bear(review_label)
    return False


def evaluate_gates(
    site_id: str,
    *,
    session: Session,
    gates: GatesConfig,
    positivity: Positivity,
    now: datetime,
    drift_flags: DriftFlagProvider | None = None,
) -> GateReport:
    """Gather a site's evidence and judge every gate.

    Args:
        site_id: the site.
        session: an open session.
        gates: thresholds.
        positivity: alert labels and thresholds.
        now: aware current time (inject the clock).
        drift_flags: open drift flags per site; None when no detector is wired.

    Returns:
        The report; ``report.verdict`` is PASS only when every gate passes.

    Raises:
        StoreError: the database failed.
    """
    evidence = gather_evidence(
        site_id, session=session, gates=gates, positivity=positivity, now=now, drift_flags=drift_flags
    )
    return judge(site_id, evidence, gates)
