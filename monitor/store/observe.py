"""Queries behind the drift detector, its flags and the review queue's metrics.

Responsible for reading the hourly counts a scope (one camera, or a site's cameras
pooled) holds over a set of periods, for opening, refreshing and closing drift flags,
and for the review numbers /metrics shows. Like the rest of the store, every function
takes the session as a keyword and never creates engines; writers do not commit unless
they say so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from sqlalchemy import and_, func, or_, true
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from monitor.metrics import ReviewNumbers
from monitor.store.db import session_scope
from monitor.store.tables import (
    CONFIDENCE_BUCKETS,
    CameraHour,
    ConfidenceHour,
    DriftFlag,
    LabelHour,
    ReviewDecision,
    ReviewItem,
    ReviewStatus,
)
from monitor.types import QueueReason

Period = tuple[datetime | None, datetime | None]
"""``[start, end)`` of hours to count; None is unbounded."""


@dataclass
class Counts:
    """What a scope's hourly tables hold over some periods.

    Attributes:
        frames: classified stills.
        episodes: alert episodes (see ``CameraHour.alert_episodes``).
        out_of_domain: classified stills with an out-of-domain signal.
        labels: predicted label -> predictions.
        confidence: predictions per tenth of confidence (``CONFIDENCE_BUCKETS`` entries).
    """

    frames: int = 0
    episodes: int = 0
    out_of_domain: int = 0
    labels: dict[str, int] = field(default_factory=dict)
    confidence: list[int] = field(default_factory=lambda: [0] * CONFIDENCE_BUCKETS)


def _in_periods(column, periods: Sequence[Period]):
    conditions = []
    for start, end in periods:
        parts = []
        if start is not None:
            parts.append(column >= start)
        if end is not None:
            parts.append(column < end)
        conditions.append(and_(*parts) if parts else true())
    return or_(*conditions)


def scope_counts(camera_ids: Sequence[str], periods: Sequence[Period], *, session: Session) -> Counts:
    """Sum the hourly counts of some cameras over hours starting inside ``periods``.

    Args:
        camera_ids: the cameras pooled.
        periods: ``[start, end)`` pairs; an empty list counts nothing.
        session: an open session.

    Returns:
        The sums.
    """
    counts = Counts()
    if not periods or not camera_ids:
        return counts
    cameras = list(camera_ids)
    frames, episodes, ood = session.exec(
        select(
            func.coalesce(func.sum(CameraHour.frames), 0),
            func.coalesce(func.sum(CameraHour.alert_episodes), 0),
            func.coalesce(func.sum(CameraHour.out_of_domain), 0),
        ).where(col(CameraHour.camera_id).in_(cameras), _in_periods(col(CameraHour.hour), periods))
    ).one()
    counts.frames, counts.episodes, counts.out_of_domain = int(frames), int(episodes), int(ood)
    labels = session.exec(
        select(LabelHour.label, func.sum(LabelHour.predictions))
        .where(col(LabelHour.camera_id).in_(cameras), _in_periods(col(LabelHour.hour), periods))
        .group_by(col(LabelHour.label))
    ).all()
    counts.labels = {str(label): int(n) for label, n in labels if n}
    buckets = session.exec(
        select(ConfidenceHour.bucket, func.sum(ConfidenceHour.predictions))
        .where(col(ConfidenceHour.camera_id).in_(cameras), _in_periods(col(ConfidenceHour.hour), periods))
        .group_by(col(ConfidenceHour.bucket))
    ).all()
    for bucket, n in buckets:
        counts.confidence[int(bucket)] = int(n or 0)
    return counts


# ---------------------------------------------------------------- drift flags


def open_flags(*, session: Session, site_id: str | None = None) -> list[DriftFlag]:
    """Open drift flags (of one site, or all), oldest first."""
    statement = select(DriftFlag).where(col(DriftFlag.closed_at).is_(None))
    if site_id is not None:
        statement = statement.where(col(DriftFlag.site_id) == site_id)
    return list(session.exec(statement.order_by(col(DriftFlag.id))).all())


def recent_flags(*, session: Session, since: datetime, site_id: str | None = None, limit: int = 200) -> list[DriftFlag]:
    """Flags open now or closed after ``since``, newest first."""
    statement = select(DriftFlag).where(or_(col(DriftFlag.closed_at).is_(None), col(DriftFlag.closed_at) >= since))
    if site_id is not None:
        statement = statement.where(col(DriftFlag.site_id) == site_id)
    return list(session.exec(statement.order_by(col(DriftFlag.id).desc()).limit(limit)).all())


def see_flag(
    *,
    session: Session,
    site_id: str,
    camera_id: str | None,
    kind: str,
    now: datetime,
    statistic: float | None,
    detail: str,
) -> tuple[DriftFlag, bool]:
    """Open a flag, or refresh the open one of the same site, camera and kind (no commit).

    Returns:
        The flag and whether it was opened now.
    """
    statement = select(DriftFlag).where(
        col(DriftFlag.site_id) == site_id, col(DriftFlag.kind) == kind, col(DriftFlag.closed_at).is_(None),
        col(DriftFlag.camera_id).is_(None) if camera_id is None else col(DriftFlag.camera_id) == camera_id,
    )
    flag = session.exec(statement).first()
    opened = flag is None
    if flag is None:
        flag = DriftFlag(site_id=site_id, camera_id=camera_id, kind=kind, opened_at=now, last_seen_at=now)
    flag.last_seen_at = now
    flag.statistic = statistic
    flag.detail = detail
    session.add(flag)
    return flag, opened


def close_quiet_flags(
    *, session: Session, site_id: str, camera_id: str | None, kinds: Iterable[str], now: datetime, quiet: timedelta
) -> list[DriftFlag]:
    """Close the open flags of these kinds whose condition was last seen ``quiet`` ago or more (no commit).

    Returns:
        The flags closed.
    """
    kinds = list(kinds)
    if not kinds:
        return []
    statement = select(DriftFlag).where(
        col(DriftFlag.site_id) == site_id, col(DriftFlag.kind).in_(kinds), col(DriftFlag.closed_at).is_(None),
        col(DriftFlag.last_seen_at) <= now - quiet,
        col(DriftFlag.camera_id).is_(None) if camera_id is None else col(DriftFlag.camera_id) == camera_id,
    )
    closed = list(session.exec(statement).all())
    for flag in closed:
        flag.closed_at = now
        session.add(flag)
    return closed


def describe_flag(flag: DriftFlag) -> str:
    """One line for people: kind, where, since when, and the numbers."""
    where = f"camera {flag.camera_id}" if flag.camera_id else "all cameras"
    since = flag.opened_at.strftime("%Y-%m-%d %H:%M UTC")
    return f"{flag.kind} on {where} since {since}: {flag.detail}"


def drift_flag_provider(engine: Engine) -> Callable[[str], list[str]]:
    """The rollout gates' ``drift_flags`` provider: site id -> its open flags, described.

    Args:
        engine: the store's engine (the drift_flags table exists).
    """

    def provide(site_id: str) -> list[str]:
        with session_scope(engine) as session:
            return [describe_flag(flag) for flag in open_flags(session=session, site_id=site_id)]

    return provide


# ---------------------------------------------------------------- review numbers for /metrics


def review_numbers(*, session: Session, now: datetime, window: timedelta) -> ReviewNumbers:
    """Pending items, decisions per outcome and reviewed precision per site.

    Precision is approved / decided among items queued as ``positive`` and decided in
    the last ``window`` (the same definition as the stats page and the precision gate:
    a relabel is not an approval).

    Args:
        session: an open session.
        now: aware current time.
        window: how far back decisions count for precision.
    """
    numbers = ReviewNumbers()
    pending = session.exec(
        select(ReviewItem.site_id, func.count(), func.min(ReviewItem.created_at))
        .where(col(ReviewItem.status) == ReviewStatus.PENDING.value)
        .group_by(col(ReviewItem.site_id))
    ).all()
    for site_id, count, oldest in pending:
        numbers.pending[site_id] = int(count)
        if oldest is not None:
            numbers.oldest_pending_seconds[site_id] = max(0.0, (now - _aware(oldest)).total_seconds())
    decisions = session.exec(
        select(ReviewItem.site_id, ReviewDecision.action, func.count())
        .join(ReviewItem, col(ReviewItem.id) == col(ReviewDecision.item_id))
        .group_by(col(ReviewItem.site_id), col(ReviewDecision.action))
    ).all()
    for site_id, action, count in decisions:
        numbers.decisions[(site_id, str(action))] = int(count)
    decided = session.exec(
        select(ReviewItem.site_id, ReviewItem.status, func.count())
        .where(
            col(ReviewItem.reason) == QueueReason.POSITIVE.value,
            col(ReviewItem.status) != ReviewStatus.PENDING.value,
            col(ReviewItem.reviewed_at) >= now - window,
        )
        .group_by(col(ReviewItem.site_id), col(ReviewItem.status))
    ).all()
    approved: dict[str, int] = {}
    for site_id, status, count in decided:
        numbers.decided_positives[site_id] = numbers.decided_positives.get(site_id, 0) + int(count)
        if status == ReviewStatus.APPROVED.value:
            approved[site_id] = approved.get(site_id, 0) + int(count)
    for site_id, total in numbers.decided_positives.items():
        numbers.precision[site_id] = approved.get(site_id, 0) / total
    return numbers


def _aware(moment: datetime) -> datetime:
    # The UTC column type returns aware datetimes; an aggregate (min) may bypass it on SQLite.
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    return moment if moment.utcoffset() is not None else moment.replace(tzinfo=timezone.utc)


__all__ = [
    "Counts",
    "Period",
    "close_quiet_flags",
    "describe_flag",
    "drift_flag_provider",
    "open_flags",
    "recent_flags",
    "review_numbers",
    "scope_counts",
    "see_flag",
]
