"""The rollout's SQL tables: each site's stage, the audit log, limited-stage windows.

Follows the store's ``XBase`` / ``X(table=True)`` / ``XPublic`` convention and its
UTC datetime type. The tables register on ``SQLModel.metadata`` when this module is
imported; :func:`rollout.store.init_rollout_schema` imports it and creates them.

Choices worth knowing:

* No foreign key to ``sites``: a stage and its history must survive a site leaving the
  config (and must be writable before the monitor ever synced the site).
* The audit log (:class:`RolloutEvent`) is append-only: the code only ever inserts rows.
  Evidence is JSON holding the gate report with its numbers, as it was when decided.
* :class:`SiteStage` carries a ``version`` for compare-and-set, so two promotions racing
  (two operators, or an operator and auto-rollback) cannot both apply.
* Windows are never deleted, only marked removed, so the audit log can always name them.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, Index, String, text
from sqlmodel import Field, SQLModel

from monitor.store.tables import ID_LENGTH, JSON_TYPE, UTCDateTime, utcnow
from rollout.stages import Stage


class EventAction(str, enum.Enum):
    """What an audit-log row records."""

    PROMOTE = "promote"
    ROLLBACK = "rollback"
    AUTO_ROLLBACK = "auto_rollback"
    WINDOW_ADDED = "window_added"
    WINDOW_REMOVED = "window_removed"


TRANSITIONS = frozenset({EventAction.PROMOTE.value, EventAction.ROLLBACK.value, EventAction.AUTO_ROLLBACK.value})


def _in_values(column: str, values: Any) -> str:
    return f"{column} IN ({', '.join(repr(getattr(v, 'value', v)) for v in values)})"


# ---------------------------------------------------------------- stage per site


class SiteStageBase(SQLModel):
    stage: str = Field(sa_type=String(16), description="a Stage value")
    since: datetime = Field(sa_type=UTCDateTime, description="when the site entered its stage (UTC)")
    model_id: str | None = Field(None, description="the model in charge when the site entered its stage")
    consecutive_failures: int = Field(
        0, ge=0, sa_column_kwargs={"server_default": text("0")},
        description="gate evaluations in a row that failed at this stage",
    )
    last_evaluated_at: datetime | None = Field(None, sa_type=UTCDateTime)
    last_verdict: str | None = Field(None, description="PASS, FAIL or INSUFFICIENT DATA")


class SiteStage(SiteStageBase, table=True):
    """The current stage of one site; a camera follows its site."""

    __tablename__ = "rollout_site_stages"
    __table_args__ = (CheckConstraint(_in_values("stage", Stage), name="ck_rollout_site_stages_stage"),)

    site_id: str = Field(primary_key=True, max_length=ID_LENGTH)
    version: int = Field(default=0, ge=0, sa_column_kwargs={"server_default": text("0")})


class SiteStagePublic(SiteStageBase):
    site_id: str
    stage: Stage


# ---------------------------------------------------------------- audit log


class RolloutEventBase(SQLModel):
    site_id: str = Field(max_length=ID_LENGTH)
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, description="when it happened (UTC)")
    actor: str = Field(description="who: a user name, or auto-rollback")
    action: str = Field(sa_type=String(32), description="an EventAction value")
    from_stage: str = Field(sa_type=String(16))
    to_stage: str = Field(sa_type=String(16))
    forced: bool = Field(False, description="a promotion made although gates did not pass")
    model_id: str | None = Field(None, description="the model in charge")
    evidence: dict[str, Any] = Field(
        default_factory=dict, sa_type=JSON_TYPE, description="the gate report with its numbers, or the window"
    )
    reason: str | None = Field(None, description="why, in the words of whoever did it")


class RolloutEvent(RolloutEventBase, table=True):
    """One row per transition or window change; rows are only ever inserted."""

    __tablename__ = "rollout_events"
    __table_args__ = (
        CheckConstraint(_in_values("action", EventAction), name="ck_rollout_events_action"),
        CheckConstraint(_in_values("from_stage", Stage), name="ck_rollout_events_from_stage"),
        CheckConstraint(_in_values("to_stage", Stage), name="ck_rollout_events_to_stage"),
        Index("ix_rollout_events_site_id_id", "site_id", "id"),
        {"sqlite_autoincrement": True},
    )

    id: int | None = Field(default=None, primary_key=True)


class RolloutEventPublic(RolloutEventBase):
    id: int


# ---------------------------------------------------------------- schedule windows


class ScheduleWindowBase(SQLModel):
    site_id: str = Field(max_length=ID_LENGTH)
    cron: str = Field(description="five-field cron expression of window starts")
    timezone: str = Field("UTC", description="IANA time zone the cron expression is read in")
    duration_s: float = Field(gt=0, description="seconds each window stays open")
    until: datetime = Field(sa_type=UTCDateTime, description="no window is open at or after this moment (UTC)")
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    created_by: str = Field(description="who added it")
    removed_at: datetime | None = Field(None, sa_type=UTCDateTime)
    removed_by: str | None = None


class ScheduleWindow(ScheduleWindowBase, table=True):
    """When a limited-stage site lets the model alert: windows starting at cron fire times."""

    __tablename__ = "rollout_windows"
    __table_args__ = (Index("ix_rollout_windows_site_id", "site_id"), {"sqlite_autoincrement": True})

    id: int | None = Field(default=None, primary_key=True)


class ScheduleWindowPublic(ScheduleWindowBase):
    id: int
