"""Queries on the rollout's tables and the store's review items and hourly counts.

Responsible for every read and write the control plane makes on the database. Every
function takes the session as a keyword (``*, session``) and none creates an engine.
Writers here add and flush but never commit: the operations in :mod:`rollout.promote`
combine a stage change and its audit row into one transaction and commit it.

Reads of review items and hourly counts assign data to periods by capture time (the
same time the hourly tables are keyed by), and an hour of counts to the period in
which the hour *starts*, so no hour is ever counted in two periods.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, func, or_, true, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from monitor.store.db import dialect_insert
from monitor.store.tables import Camera, LabelHour, ReviewItem, ReviewStatus
from monitor.types import QueueReason
from rollout.stages import Stage
from rollout.tables import TRANSITIONS, RolloutEvent, ScheduleWindow, SiteStage

log = logging.getLogger(__name__)

MAX_EVENTS = 1000
DECIDED = (ReviewStatus.APPROVED.value, ReviewStatus.REJECTED.value, ReviewStatus.RELABELLED.value)


def init_rollout_schema(engine: Engine) -> None:
    """Create the rollout's tables (and the store's, which it reads) if missing; idempotent.

    Args:
        engine: from :func:`monitor.store.create_engine_for`.

    Raises:
        StoreError: the database refused (unreachable, read-only, no permission).
    """
    # The migrations (monitor/store/migrations) create the rollout's tables with the
    # store's, so this is the store's own check: create when empty, refuse when old.
    from monitor.store.db import init_schema

    init_schema(engine)


# ---------------------------------------------------------------- stages


def get_state(site_id: str, *, session: Session) -> SiteStage | None:
    """The site's stage row, fresh from the database; None when it has none yet."""
    return session.get(SiteStage, site_id, populate_existing=True)


def list_states(*, session: Session) -> list[SiteStage]:
    """Every site's stage row, by site id."""
    return list(session.exec(select(SiteStage).order_by(col(SiteStage.site_id))).all())


def earliest_data(site_id: str, *, session: Session) -> datetime | None:
    """The first hour the site's cameras have counts for; None when they have none."""
    statement = (
        select(func.min(LabelHour.hour))
        .join(Camera, col(Camera.id) == col(LabelHour.camera_id))
        .where(col(Camera.site_id) == site_id)
    )
    return session.exec(statement).one()


def ensure_states(site_ids: Iterable[str], *, session: Session, now: datetime) -> dict[str, SiteStage]:
    """The stage rows of ``site_ids``, adding a manual one for each site without (no commit).

    A new row's ``since`` is the site's first counted hour when it has data (before the
    rollout existed every site was effectively manual), else ``now``.

    Args:
        site_ids: sites to make sure of.
        session: an open session.
        now: aware current time.

    Returns:
        site id -> its row.
    """
    states: dict[str, SiteStage] = {}
    for site_id in dict.fromkeys(site_ids):
        state = get_state(site_id, session=session)
        if state is None:
            first = earliest_data(site_id, session=session)
            row = {"site_id": site_id, "stage": Stage.MANUAL.value, "since": min(first, now) if first else now,
                   "consecutive_failures": 0, "version": 0}
            # Another process may add the same row at the same moment (a CLI command and
            # `monitor run`); "insert unless there" keeps both from failing.
            insert = dialect_insert(session.get_bind().dialect.name)
            session.execute(insert(SiteStage.__table__).values(row).on_conflict_do_nothing())
            state = get_state(site_id, session=session)
            assert state is not None
        states[site_id] = state
    return states


def set_stage(
    site_id: str,
    *,
    expected_version: int,
    stage: Stage,
    since: datetime,
    model_id: str | None,
    session: Session,
) -> bool:
    """Move a site to ``stage`` if nobody changed it since version ``expected_version`` (no commit).

    Returns:
        True when the row was updated; False when another change got there first.
    """
    statement = (
        update(SiteStage)
        .where(col(SiteStage.site_id) == site_id, col(SiteStage.version) == expected_version)
        .values(
            stage=stage.value,
            since=since,
            model_id=model_id,
            consecutive_failures=0,
            version=expected_version + 1,
        )
    )
    return session.execute(statement).rowcount == 1


def record_evaluation(
    site_id: str,
    *,
    expected_version: int,
    verdict: str,
    failures: int,
    at: datetime,
    session: Session,
) -> bool:
    """Store an evaluation's verdict and the run of failures, unless the stage changed meanwhile."""
    statement = (
        update(SiteStage)
        .where(col(SiteStage.site_id) == site_id, col(SiteStage.version) == expected_version)
        .values(last_verdict=verdict, last_evaluated_at=at, consecutive_failures=failures)
    )
    return session.execute(statement).rowcount == 1


# ---------------------------------------------------------------- audit log


def append_event(event: RolloutEvent, *, session: Session) -> RolloutEvent:
    """Add one audit-log row (no commit); the log is append-only, so nothing updates it."""
    session.add(event)
    session.flush()
    return event


def list_events(site_id: str, *, session: Session, limit: int = 100) -> list[RolloutEvent]:
    """A site's audit log, newest first.

    Raises:
        ValueError: ``limit`` outside 1..1000.
    """
    if not 1 <= limit <= MAX_EVENTS:
        raise ValueError(f"limit must be between 1 and {MAX_EVENTS}, got {limit}")
    statement = (
        select(RolloutEvent)
        .where(col(RolloutEvent.site_id) == site_id)
        .order_by(col(RolloutEvent.id).desc())
        .limit(limit)
    )
    return list(session.exec(statement).all())


@dataclass(frozen=True, slots=True)
class StagePeriod:
    """A stretch of time a site spent in one stage; None bounds are open."""

    stage: Stage
    start: datetime | None
    end: datetime | None


def stage_periods(site_id: str, *, session: Session) -> list[StagePeriod]:
    """The site's stages over time, oldest first, from its audit log.

    The first period has no start: before the first transition the site was in that
    transition's ``from`` stage for as long as it had data.
    """
    statement = (
        select(RolloutEvent)
        .where(col(RolloutEvent.site_id) == site_id, col(RolloutEvent.action).in_(TRANSITIONS))
        .order_by(col(RolloutEvent.id))
    )
    events = list(session.exec(statement).all())
    if not events:
        state = get_state(site_id, session=session)
        return [StagePeriod(Stage(state.stage) if state else Stage.MANUAL, None, None)]
    periods = [StagePeriod(Stage(events[0].from_stage), None, events[0].at)]
    for event, following in zip(events, [*events[1:], None]):
        periods.append(StagePeriod(Stage(event.to_stage), event.at, following.at if following else None))
    return periods


# ---------------------------------------------------------------- schedule windows


def add_window(window: ScheduleWindow, *, session: Session) -> ScheduleWindow:
    """Add a schedule window (no commit)."""
    session.add(window)
    session.flush()
    return window


def get_window(window_id: int, *, session: Session) -> ScheduleWindow | None:
    return session.get(ScheduleWindow, window_id)


def list_windows(
    *, session: Session, site_id: str | None = None, active_at: datetime | None = None
) -> list[ScheduleWindow]:
    """Windows not removed, by id; only those of ``site_id`` and only those whose
    ``until`` is after ``active_at`` when given."""
    statement = select(ScheduleWindow).where(col(ScheduleWindow.removed_at).is_(None))
    if site_id is not None:
        statement = statement.where(col(ScheduleWindow.site_id) == site_id)
    if active_at is not None:
        statement = statement.where(col(ScheduleWindow.until) > active_at)
    return list(session.exec(statement.order_by(col(ScheduleWindow.id))).all())


# ---------------------------------------------------------------- evidence


@dataclass(frozen=True, slots=True)
class ReviewTally:
    """Decided review items of one kind, counted."""

    reason: str
    status: str
    camera_id: str
    label: str
    review_label: str | None
    count: int


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One decided audit item: whether it was positive depends on its camera's threshold."""

    camera_id: str
    label: str
    confidence: float
    status: str
    review_label: str | None


def _in_period(statement, column, start: datetime | None, end: datetime | None):
    if start is not None:
        statement = statement.where(column >= start)
    if end is not None:
        statement = statement.where(column < end)
    return statement


def review_tallies(
    site_id: str, *, session: Session, start: datetime | None, end: datetime | None
) -> list[ReviewTally]:
    """Decided, non-audit review items of a site captured in ``[start, end)``, grouped."""
    statement = (
        select(
            ReviewItem.reason, ReviewItem.status, ReviewItem.camera_id, ReviewItem.label,
            ReviewItem.review_label, func.count(),
        )
        .where(col(ReviewItem.site_id) == site_id)
        .where(col(ReviewItem.status).in_(DECIDED))
        .where(col(ReviewItem.reason) != QueueReason.AUDIT.value)
        .group_by(
            col(ReviewItem.reason), col(ReviewItem.status), col(ReviewItem.camera_id),
            col(ReviewItem.label), col(ReviewItem.review_label),
        )
    )
    statement = _in_period(statement, col(ReviewItem.captured_at), start, end)
    return [ReviewTally(str(r), str(s), str(c), str(lb), rl, int(n)) for r, s, c, lb, rl, n in session.exec(statement)]


def audit_rows(site_id: str, *, session: Session, start: datetime | None, end: datetime | None) -> list[AuditRow]:
    """Decided audit items of a site captured in ``[start, end)``."""
    statement = (
        select(ReviewItem.camera_id, ReviewItem.label, ReviewItem.confidence, ReviewItem.status, ReviewItem.review_label)
        .where(col(ReviewItem.site_id) == site_id)
        .where(col(ReviewItem.status).in_(DECIDED))
        .where(col(ReviewItem.reason) == QueueReason.AUDIT.value)
    )
    statement = _in_period(statement, col(ReviewItem.captured_at), start, end)
    return [AuditRow(str(c), str(lb), float(cf), str(s), rl) for c, lb, cf, s, rl in session.exec(statement)]


def pending_count(site_id: str, *, session: Session, start: datetime | None, end: datetime | None) -> int:
    """Review items of a site captured in ``[start, end)`` that nobody decided yet."""
    statement = (
        select(func.count())
        .select_from(ReviewItem)
        .where(col(ReviewItem.site_id) == site_id, col(ReviewItem.status) == ReviewStatus.PENDING.value)
    )
    statement = _in_period(statement, col(ReviewItem.captured_at), start, end)
    return int(session.exec(statement).one())


@dataclass(frozen=True, slots=True)
class RateCounts:
    """Positives and classified stills of a site over some hours."""

    positives: int
    predictions: int
    hours: int


def rate_counts(
    site_id: str, *, session: Session, periods: Sequence[tuple[datetime | None, datetime | None]]
) -> RateCounts:
    """Sum a site's hourly positives and predictions over hours starting inside ``periods``.

    Args:
        site_id: the site (its cameras are found through the cameras table).
        session: an open session.
        periods: ``[start, end)`` pairs, None meaning unbounded; an empty list counts nothing.
    """
    if not periods:
        return RateCounts(0, 0, 0)
    conditions = []
    for start, end in periods:
        parts = []
        if start is not None:
            parts.append(col(LabelHour.hour) >= start)
        if end is not None:
            parts.append(col(LabelHour.hour) < end)
        conditions.append(and_(*parts) if parts else true())
    statement = (
        select(
            func.coalesce(func.sum(LabelHour.positives), 0),
            func.coalesce(func.sum(LabelHour.predictions), 0),
            func.count(func.distinct(col(LabelHour.hour))),
        )
        .join(Camera, col(Camera.id) == col(LabelHour.camera_id))
        .where(col(Camera.site_id) == site_id)
        .where(or_(*conditions))
    )
    positives, predictions, hours = session.exec(statement).one()
    return RateCounts(int(positives), int(predictions), int(hours))


def latest_model_id(site_id: str, *, session: Session) -> str | None:
    """The model that made the site's newest review item; None when it has none."""
    statement = (
        select(ReviewItem.model_id)
        .where(col(ReviewItem.site_id) == site_id)
        .order_by(col(ReviewItem.id).desc())
        .limit(1)
    )
    return session.exec(statement).first()


def known_site_ids(*, session: Session) -> list[str]:
    """Sites with a stage row or with a camera in the store, by id."""
    with_stage = set(session.exec(select(SiteStage.site_id)).all())
    with_camera = set(session.exec(select(Camera.site_id).distinct()).all())
    return sorted(with_stage | with_camera)
