"""The `rollout:` section of the config file: gates, routing per stage, auto-rollback.

Strict like the rest of the config (unknown keys are errors, every field has a default
and a description) and checked by named ``verify_*`` functions. The lead composes it
into ``monitor.config.MonitorConfig`` as ``rollout: RolloutConfig``; this module must
therefore never import ``monitor.config`` at import time (that would be a cycle), so it
has its own :class:`Strict` base with the same settings and parses durations through a
late import of ``monitor.config.parse_duration``.

Each stage has its own routing model with its own defaults, so that overriding one key
of a stage (``expansion: {positive_sample_rate: 0.5}``) keeps that stage's defaults for
the other keys instead of falling back to another stage's.
"""

from __future__ import annotations

import zoneinfo
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from rollout.stages import Stage


def _duration(value: Any) -> float:
    from monitor.config import parse_duration  # late: monitor.config imports this module

    return parse_duration(value)


Duration = Annotated[float, BeforeValidator(_duration)]
Rate = Annotated[float, Field(ge=0.0, le=1.0)]
DAY = 86400.0


class Strict(BaseModel):
    """Base of every rollout config section: unknown keys are errors (as in monitor.config)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class GatesConfig(Strict):
    """Thresholds of the promotion gates; every gate also needs enough data to pass."""

    min_reviewed: int = Field(200, ge=1, description="decided review items in the stage before it may be left")
    min_days_in_stage: float = Field(7.0, ge=0.0, description="days a site stays in a stage before promotion")
    min_days_by_stage: dict[Stage, float] = Field(
        default_factory=dict,
        description="per-stage override of min_days_in_stage, e.g. {limited: 30} for a month of windows",
    )
    confidence: float = Field(
        0.95, gt=0.5, lt=1.0, description="two-sided confidence of every interval the gates use"
    )
    precision_target: float = Field(
        0.9, gt=0.0, le=1.0,
        description="the Wilson lower bound of approved / decided positives must reach this",
    )
    min_decided_positives: int = Field(
        30, ge=1, description="decided positives needed before precision is judged at all"
    )
    miss_rate_max: float = Field(
        0.02, gt=0.0, lt=1.0,
        description="the Clopper-Pearson upper bound of bears found among reviewed negative samples "
        "must be at or below this",
    )
    min_decided_negatives: int = Field(
        100, ge=1, description="decided negative samples needed before misses are judged at all"
    )
    rate_ratio_min: float = Field(0.5, gt=0.0, description="lowest acceptable alert rate / manual baseline")
    rate_ratio_max: float = Field(2.0, gt=0.0, description="highest acceptable alert rate / manual baseline")
    min_baseline_positives: int = Field(
        30, ge=1, description="positives the manual-stage baseline needs before rates are compared"
    )
    min_expected_positives: float = Field(
        10.0, gt=0.0,
        description="positives the current period would hold at the baseline rate before rates are compared",
    )
    evidence_window: Duration = Field(
        14 * DAY,
        description="gates look at the stage's data from at most this long ago ('14d'), so a recent "
        "drop is not averaged away by a long good past",
    )

    @model_validator(mode="after")
    def _verify(self) -> "GatesConfig":
        verify_rate_band(self)
        return self

    def min_days_for(self, stage: Stage) -> float:
        """Days a site must spend in ``stage`` before it may be promoted from it."""
        return self.min_days_by_stage.get(stage, self.min_days_in_stage)


class ManualRouting(Strict):
    """Manual: every positive goes to a person; nobody is alerted."""

    negative_sample_rate: Rate = Field(0.05, description="share of negatives reviewed, so misses can be counted")
    review_out_of_domain: bool = Field(False, description="also review every out-of-domain frame")


class LimitedRouting(Strict):
    """Limited: inside the site's schedule windows positives alert and are all reviewed;
    outside them the site behaves as manual."""

    negative_sample_rate: Rate = Field(0.05, description="share of negatives reviewed, in and out of windows")
    review_out_of_domain: bool = Field(False, description="also review every out-of-domain frame")


class ExpansionRouting(Strict):
    """Expansion: positives alert; people check a sample and every doubtful frame."""

    positive_sample_rate: Rate = Field(0.25, description="share of positives reviewed")
    negative_sample_rate: Rate = Field(0.05, description="share of negatives reviewed")
    review_out_of_domain: bool = Field(True, description="review every out-of-domain frame")
    review_low_confidence: bool = Field(True, description="review every frame below low_confidence_below")
    low_confidence_below: float = Field(
        0.6, ge=0.0, le=1.0, description="a prediction whose confidence is below this is low-confidence"
    )


class FullRouting(Strict):
    """Full: positives alert everywhere; a small audit sample is still reviewed."""

    audit_sample_rate: Rate = Field(0.05, description="share of all frames (positive or not) reviewed as audit")
    review_out_of_domain: bool = Field(True, description="review every out-of-domain frame")
    review_low_confidence: bool = Field(False, description="review every frame below low_confidence_below")
    low_confidence_below: float = Field(
        0.6, ge=0.0, le=1.0, description="a prediction whose confidence is below this is low-confidence"
    )


class RoutingConfig(Strict):
    """What happens to a prediction at each stage; each stage keeps its own defaults."""

    manual: ManualRouting = Field(default_factory=ManualRouting)
    limited: LimitedRouting = Field(default_factory=LimitedRouting)
    expansion: ExpansionRouting = Field(default_factory=ExpansionRouting)
    full: FullRouting = Field(default_factory=FullRouting)


class AutoRollbackConfig(Strict):
    """Dropping a site one stage when its gates keep failing (off unless turned on)."""

    enabled: bool = Field(False, description="roll back automatically at limited or later")
    consecutive_failures: int = Field(
        3, ge=1, description="roll back after this many failing evaluations in a row (K)"
    )


class RolloutConfig(Strict):
    """Staged rollout: routing per stage, gates, automatic rollback, schedules."""

    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    gates: GatesConfig = Field(default_factory=GatesConfig)
    auto_rollback: AutoRollbackConfig = Field(default_factory=AutoRollbackConfig)
    evaluation_interval: Duration = Field(3600.0, description="evaluate every site's gates this often ('1h')")
    refresh_interval: Duration = Field(
        2.0, description="running processes re-read every site's stage this often (at most 5s)"
    )
    timezone: str = Field("UTC", description="IANA time zone that window cron expressions are read in")
    window_duration: Duration = Field(3600.0, description="default length of a limited-stage window ('1h')")

    @model_validator(mode="after")
    def _verify(self) -> "RolloutConfig":
        verify_refresh_interval(self)
        verify_timezone(self)
        return self


def verify_rate_band(gates: GatesConfig) -> None:
    """The band of acceptable alert-rate ratios contains 1 (no change must be acceptable)."""
    if not gates.rate_ratio_min < 1.0 < gates.rate_ratio_max:
        raise ValueError(
            f"rate_ratio_min ({gates.rate_ratio_min}) must be below 1 and rate_ratio_max "
            f"({gates.rate_ratio_max}) above 1, e.g. 0.5 and 2"
        )


def verify_refresh_interval(config: RolloutConfig) -> None:
    """Stage changes must reach running processes within 10 s, so refresh at least every 5 s."""
    if config.refresh_interval > 5.0:
        raise ValueError(
            f"refresh_interval {config.refresh_interval:g}s is too long; use 5s or less so stage "
            "changes reach running processes within 10 seconds"
        )


def verify_timezone(config: RolloutConfig) -> None:
    """The time zone is a known IANA name."""
    try:
        zoneinfo.ZoneInfo(config.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"timezone {config.timezone!r} is not a known time zone; use an IANA name like UTC or America/Denver"
        ) from None
