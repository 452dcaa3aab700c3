"""The `ood:` and `drift:` sections of the config file.

``ood`` holds the thresholds of the cheap per-frame out-of-domain signals
(:mod:`monitor.ood`); ``drift`` holds the schedule, windows and significance levels of
the drift detector (:mod:`monitor.drift`). The defaults were chosen on the real photos in
``../shared/data`` (OOD) and by ``bench/drift_sim.py`` (drift); the README has the numbers.

Strict like the rest of the config. :mod:`monitor.config` composes these models, so this
module must not import it at import time (a cycle): it has its own :class:`Strict` base
and parses durations through a late import, as :mod:`rollout.config` does.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

DAY = 86400.0


def _duration(value: Any) -> float:
    from monitor.config import parse_duration  # late: monitor.config imports this module

    return parse_duration(value)


Duration = Annotated[float, BeforeValidator(_duration)]


class Strict(BaseModel):
    """Base of these sections: unknown keys are errors (as in monitor.config)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class OodConfig(Strict):
    """Cheap per-frame out-of-domain signals; a frame with any signal is out of domain.

    Image signals are measured on a copy of the frame scaled down to ``analysis_width``
    pixels wide, so they cost about a millisecond whatever the camera's resolution.
    """

    enabled: bool = Field(True, description="measure the signals; off means no frame is ever out of domain")
    analysis_width: int = Field(
        160, ge=32, le=1280, description="frames are scaled down to this width before measuring (pixels)"
    )
    dark_below: float = Field(
        35.0, ge=0.0, le=255.0,
        description="median luminance (0-255) below which a frame is dark (night without IR, lens covered)",
    )
    blur_below: float = Field(
        100.0, ge=0.0,
        description="variance of the Laplacian (on the scaled-down grey frame) below which a frame is "
        "blurred (fog, defocus, a wet or dirty lens)",
    )
    grayscale_below: float = Field(
        2.5, ge=0.0, le=255.0,
        description="mean difference between colour channels (0-255) below which a frame is grey: "
        "an infrared night image",
    )
    frozen_difference_below: float = Field(
        0.5, ge=0.0, le=255.0,
        description="mean absolute difference (0-255, at analysis_width) to the camera's previous frame below "
        "which the two count as identical; a live sensor's noise alone stays above it",
    )
    frozen_after: int = Field(
        3, ge=1, description="a camera is frozen once this many consecutive frames were identical to the one before"
    )
    low_confidence_below: float = Field(
        0.5, ge=0.0, le=1.0, description="a prediction whose confidence is below this is low-confidence"
    )
    signals: list[str] = Field(
        default_factory=lambda: ["dark", "blur", "grayscale", "frozen", "low_confidence"],
        description="the signals in use: any of dark, blur, grayscale, frozen, low_confidence",
    )

    @model_validator(mode="after")
    def _verify(self) -> "OodConfig":
        verify_known_signals(self)
        return self


def verify_known_signals(config: OodConfig) -> None:
    """Every listed signal exists and none is listed twice."""
    known = ("dark", "blur", "grayscale", "frozen", "low_confidence")
    for name in config.signals:
        if name not in known:
            raise ValueError(f"unknown signal {name!r}; use any of {', '.join(known)}")
    if len(set(config.signals)) != len(config.signals):
        raise ValueError("signals lists a signal twice; list each once")


class ReferenceWindow(Strict):
    """A fixed stretch of time whose counts are the baseline (instead of the manual stage)."""

    start: datetime = Field(description="start of the reference window, with a time zone (2026-05-01T00:00:00Z)")
    end: datetime = Field(description="end of the reference window, with a time zone")

    @model_validator(mode="after")
    def _verify(self) -> "ReferenceWindow":
        verify_reference_window(self)
        return self


def verify_reference_window(window: ReferenceWindow) -> None:
    """Both ends are timezone-aware and the window is not empty."""
    if window.start.utcoffset() is None or window.end.utcoffset() is None:
        raise ValueError("give start and end with a time zone, e.g. 2026-05-01T00:00:00Z")
    if window.end <= window.start:
        raise ValueError("end must be after start")


class DriftConfig(Strict):
    """The drift detector: each site and camera against its baseline, every ``interval``.

    The baseline is the site's manual-stage period (before the longest window), or
    ``reference`` when given. Alert rates are compared as alert *episodes* (positives of a
    camera closer than ``episode_gap`` count once), because one bear in front of a
    camera gives many positive stills, which would break the Poisson assumption.
    """

    enabled: bool = Field(True, description="run the detector in `monitor run`")
    interval: Duration = Field(3600.0, description="how often the detector runs ('1h')")
    reference: ReferenceWindow | None = Field(
        None, description="a fixed baseline window; by default the site's manual-stage period"
    )
    windows: list[Duration] = Field(
        default_factory=lambda: [1 * DAY, 3 * DAY, 7 * DAY, 14 * DAY],
        min_length=1,
        description="recent windows compared with the baseline; whole days, so each holds as many nights "
        "as days. The significance level is shared between them (Bonferroni)",
    )
    episode_gap: Duration = Field(
        60.0, description="positives of one camera less than this apart are one alert episode"
    )
    rate_alpha: float = Field(
        0.0003, gt=0.0, lt=0.5,
        description="one-sided significance level of the alert-rate test per evaluation, shared by the "
        "windows; 0.0003 gives about 0.3 false flags per camera-year at 10 alerts/day (bench/drift_sim.py)",
    )
    rate_ratio_up: float = Field(
        1.5, gt=1.0, description="a rate increase is flagged only when the ratio is at least this (and significant)"
    )
    rate_ratio_down: float = Field(
        0.67, gt=0.0, lt=1.0, description="a rate decrease is flagged only when the ratio is at most this"
    )
    min_baseline_alerts: int = Field(
        20, ge=1, description="alert episodes the baseline needs before rates are compared"
    )
    min_expected_alerts: float = Field(
        5.0, gt=0.0, description="episodes a window would hold at the baseline rate before it is tested"
    )
    min_predictions: int = Field(
        500, ge=1,
        description="classified stills the window and the baseline each need before confidence, class "
        "mix and out-of-domain rate are compared",
    )
    confidence_psi_max: float = Field(
        0.25, gt=0.0,
        description="population stability index of the confidence distribution above which it has shifted "
        "(0.1 is a moderate, 0.25 a large shift)",
    )
    class_mix_alpha: float = Field(
        0.001, gt=0.0, lt=0.5, description="significance level of the chi-square test of the class mix"
    )
    class_mix_min_distance: float = Field(
        0.1, gt=0.0, le=1.0,
        description="total variation distance between the class mixes a significant change must also reach: "
        "with thousands of correlated stills a day, significance alone flags trivial changes",
    )
    ood_ratio_max: float = Field(
        2.0, gt=1.0, description="the out-of-domain share of stills may grow to this many times the baseline's"
    )
    ood_min_increase: float = Field(
        0.1, gt=0.0, le=1.0, description="... and must also grow by at least this share of all stills (0.1 = 10 points)"
    )
    clear_after: int = Field(
        24, ge=1, description="a flag closes after this many evaluations in a row without its condition"
    )
    review_window: Duration = Field(
        7 * DAY, description="reviewed precision on /metrics covers the decisions of this long ago"
    )
    metrics_cache: Duration = Field(
        10.0, description="database-backed metrics (pending reviews, precision, baselines) are re-read at most this often"
    )

    @model_validator(mode="after")
    def _verify(self) -> "DriftConfig":
        verify_windows(self)
        return self

    @property
    def longest_window(self) -> float:
        return max(self.windows)


def verify_windows(config: DriftConfig) -> None:
    """Windows are distinct and at least an hour (counts are hourly)."""
    if len(set(config.windows)) != len(config.windows):
        raise ValueError("windows lists a duration twice; list each once")
    if min(config.windows) < 3600:
        raise ValueError("windows must be at least 1h: counts are kept per hour")
