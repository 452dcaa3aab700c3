"""Queries on the alert outbox: adding alerts with their entries, finding what to deliver.

Responsible for the database side of notifications. :func:`add_alerts` adds an alert
and one outbox entry per target of its site to the caller's session without committing,
so they commit (or roll back) with the review rows of the same still. The dispatcher
(:mod:`monitor.notify`) asks :func:`due_heads` for the oldest pending entry of each
(target, camera) whose retry time has come, delivers it, and records the result with
:func:`mark_delivered`, :func:`mark_failed` or, when the retry policy gives up,
:func:`mark_dead`. Only the oldest pending entry of a camera is ever handed out, which
is what keeps delivery in order per camera; a dead entry is no longer pending, so the
camera's next entry becomes its head.

Dead entries wait for an operator (`monitor notify`): :func:`dead_entries` lists them,
:func:`requeue_dead` makes them pending again (same ids, so still in order per camera
among themselves, and the same payload and idempotency key), :func:`discard_dead`
gives up on them for good. :func:`prune_finished` deletes old delivered and discarded
entries and the alerts left without any entry; pending and dead ones are never deleted.

Every function takes the session as a keyword and never commits, except where noted.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol

from sqlalchemy import and_, delete, exists, func, not_, update
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select

from monitor.store.cluster_tables import Alert, OutboxEntry, OutboxStatus
from monitor.types import Frame, Prediction, Route

# Fixed namespace: the same (camera, capture time) gives the same key in every process,
# every release and after a retry, so receivers can deduplicate on it.
_KEY_NAMESPACE = uuid.UUID("6c1b9a3e-4f0d-5b6e-9a51-2f8d7c0e4b11")
MAX_ERROR_CHARS = 500


class AlertRecord(Protocol):
    """What :func:`add_alerts` needs of each record (e.g. ``monitor.types.Outcome``)."""

    site_id: str
    frame: Frame
    prediction: Prediction
    route: Route


def alert_key(camera_id: str, captured_at: datetime, origin: str = "") -> str:
    """The idempotency key of the alert for one still: a UUID derived from the still.

    Args:
        camera_id: the camera.
        captured_at: the still's capture time (aware).
        origin: the still's ``Frame.origin`` (the file, for a folder of stills, where
            a burst of photos can share one second).

    Raises:
        ValueError: ``captured_at`` is naive.
    """
    if captured_at.utcoffset() is None:
        raise ValueError("captured_at must be timezone-aware")
    moment = captured_at.astimezone(timezone.utc).isoformat(timespec="microseconds")
    return str(uuid.uuid5(_KEY_NAMESPACE, f"{camera_id}|{moment}|{origin}"))


def alert_payload(alert: Alert) -> dict[str, Any]:
    """The JSON body every target receives for an alert (webhook body, MQTT payload)."""
    return {
        "key": alert.key,
        "alert_id": alert.id,
        "site": alert.site_id,
        "camera": alert.camera_id,
        "captured_at": alert.captured_at.astimezone(timezone.utc).isoformat(),
        "label": alert.label,
        "confidence": round(float(alert.confidence), 4),
        "model": alert.model_id,
    }


def add_alerts(
    records: Sequence[AlertRecord],
    *,
    session: Session,
    targets_by_site: Mapping[str, Sequence[str]],
    worker: str | None = None,
    now: datetime,
) -> list[Alert]:
    """Add an alert and its outbox entries for every record whose route alerts (no commit).

    Args:
        records: routed predictions; those with ``route.alert`` false are skipped.
        session: an open session; the caller commits, together with the review rows.
        targets_by_site: site id -> names of the notify targets its alerts go to.
        worker: the worker recording them (kept on the alert, for people).
        now: when the entries become due (the dispatcher's clock).

    Returns:
        The new alerts, with ids.
    """
    alerts: list[tuple[Alert, Sequence[str]]] = []
    for record in records:
        if not record.route.alert:
            continue
        frame, prediction = record.frame, record.prediction
        alert = Alert(
            key=alert_key(frame.camera_id, frame.captured_at, frame.origin),
            site_id=record.site_id,
            camera_id=frame.camera_id,
            captured_at=frame.captured_at,
            label=prediction.label,
            confidence=float(prediction.confidence),
            model_id=prediction.model_id,
            worker=worker,
            created_at=now,
        )
        session.add(alert)
        alerts.append((alert, targets_by_site.get(record.site_id, ())))
    if not alerts:
        return []
    session.flush()  # alert ids, for the payloads and the entries' foreign key
    for alert, targets in alerts:
        payload = alert_payload(alert)
        for target in targets:
            session.add(
                OutboxEntry(
                    alert_id=int(alert.id), target=target, camera_id=alert.camera_id, payload=payload,
                    next_attempt_at=now, created_at=now,
                )
            )
    session.flush()
    return [alert for alert, _ in alerts]


def due_heads(
    *,
    session: Session,
    now: datetime,
    cameras: Collection[str] | None = None,
    targets: Collection[str] | None = None,
    limit: int = 100,
) -> list[OutboxEntry]:
    """The oldest pending entry of each (target, camera) whose retry time has come.

    An entry behind an older pending one of the same target and camera is never
    returned, even when the older one is waiting for its retry: delivery stays in
    order per camera.

    Args:
        session: an open session.
        now: entries due at or before this moment.
        cameras: only these cameras (the ones this worker holds); None for all.
        targets: only these targets (the ones configured here); None for all.
        limit: at most this many entries, oldest first.

    Returns:
        Entries ordered by id.
    """
    if cameras is not None and not cameras:
        return []
    older = aliased(OutboxEntry)
    head_id = (
        select(func.min(older.id))
        .where(older.target == OutboxEntry.target, older.camera_id == OutboxEntry.camera_id)
        .where(older.status == OutboxStatus.PENDING.value)
        .scalar_subquery()
    )
    statement = select(OutboxEntry).where(
        col(OutboxEntry.status) == OutboxStatus.PENDING.value,
        col(OutboxEntry.id) == head_id,
        col(OutboxEntry.next_attempt_at) <= now,
    )
    if cameras is not None:
        statement = statement.where(col(OutboxEntry.camera_id).in_(list(cameras)))
    if targets is not None:
        statement = statement.where(col(OutboxEntry.target).in_(list(targets)))
    statement = statement.order_by(col(OutboxEntry.id)).limit(limit)
    return list(session.exec(statement).all())


def mark_delivered(entry_id: int, *, session: Session, now: datetime) -> bool:
    """Record a successful delivery (no commit).

    Returns:
        False when the entry was no longer pending (another dispatcher delivered it).
    """
    result = session.execute(
        update(OutboxEntry)
        .where(col(OutboxEntry.id) == entry_id, col(OutboxEntry.status) == OutboxStatus.PENDING.value)
        .values(status=OutboxStatus.DELIVERED.value, delivered_at=now, attempts=OutboxEntry.attempts + 1,
                last_error=None)
    )
    return result.rowcount == 1


def mark_failed(entry_id: int, *, session: Session, error: str, retry_at: datetime) -> None:
    """Record a failed attempt and when to try again (no commit)."""
    session.execute(
        update(OutboxEntry)
        .where(col(OutboxEntry.id) == entry_id, col(OutboxEntry.status) == OutboxStatus.PENDING.value)
        .values(attempts=OutboxEntry.attempts + 1, next_attempt_at=retry_at, last_error=error[:MAX_ERROR_CHARS])
    )


def mark_dead(entry_id: int, *, session: Session, error: str, now: datetime) -> bool:
    """Give up on a pending entry after a failed attempt (no commit); the camera's next entry goes on.

    Returns:
        False when the entry was no longer pending.
    """
    result = session.execute(
        update(OutboxEntry)
        .where(col(OutboxEntry.id) == entry_id, col(OutboxEntry.status) == OutboxStatus.PENDING.value)
        .values(status=OutboxStatus.DEAD.value, attempts=OutboxEntry.attempts + 1, dead_at=now,
                last_error=error[:MAX_ERROR_CHARS])
    )
    return result.rowcount == 1


def entry_age_from(entry: OutboxEntry) -> datetime:
    """Where an entry's age (for ``notify.retry.max_age``) starts: its last requeue, else its creation."""
    return entry.requeued_at or entry.created_at


def pending_by_target(*, session: Session) -> dict[str, int]:
    """How many entries wait for delivery, per target."""
    return {target: count for (target, status), count in status_counts(session=session).items()
            if status == OutboxStatus.PENDING.value}


def status_counts(
    *, session: Session, statuses: Collection[str] = (OutboxStatus.PENDING.value, OutboxStatus.DEAD.value)
) -> dict[tuple[str, str], int]:
    """(target, status) -> how many entries, for the given statuses (default: pending and dead)."""
    statement = (
        select(OutboxEntry.target, OutboxEntry.status, func.count())
        .where(col(OutboxEntry.status).in_(list(statuses)))
        .group_by(OutboxEntry.target, OutboxEntry.status)
    )
    return {(target, status): int(count) for target, status, count in session.exec(statement).all()}


def _dead_selection(target: str | None, camera: str | None, ids: Collection[int] | None) -> list[Any]:
    conditions: list[Any] = [col(OutboxEntry.status) == OutboxStatus.DEAD.value]
    if target is not None:
        conditions.append(col(OutboxEntry.target) == target)
    if camera is not None:
        conditions.append(col(OutboxEntry.camera_id) == camera)
    if ids is not None:
        conditions.append(col(OutboxEntry.id).in_(list(ids)))
    return conditions


def dead_entries(
    *, session: Session, target: str | None = None, camera: str | None = None, limit: int | None = None
) -> list[OutboxEntry]:
    """Dead entries, oldest first.

    Args:
        session: an open session.
        target: only this target.
        camera: only this camera.
        limit: at most this many.
    """
    statement = select(OutboxEntry).where(*_dead_selection(target, camera, None)).order_by(col(OutboxEntry.id))
    if limit is not None:
        statement = statement.limit(limit)
    return list(session.exec(statement).all())


def requeue_dead(
    *, session: Session, target: str, now: datetime, camera: str | None = None, ids: Collection[int] | None = None
) -> int:
    """Make dead entries of a target pending again, due now (no commit).

    They keep their ids, so the dispatcher delivers each camera's requeued entries in
    their original order (after any of the camera's pending entries with smaller ids),
    and their payload, so receivers see the same idempotency key. Attempts start again
    from zero and their age (for ``max_age``) from now; the last error is kept until a
    delivery succeeds. One UPDATE: the dispatcher sees all of them at once or none.

    Args:
        session: an open session.
        target: the target whose dead entries are requeued.
        now: when they become due.
        camera: only this camera's.
        ids: only these entries.

    Returns:
        How many were requeued.
    """
    result = session.execute(
        update(OutboxEntry).where(*_dead_selection(target, camera, ids))
        .values(status=OutboxStatus.PENDING.value, attempts=0, next_attempt_at=now, requeued_at=now, dead_at=None)
    )
    return int(result.rowcount)


def discard_dead(
    *, session: Session, target: str, now: datetime, camera: str | None = None, ids: Collection[int] | None = None
) -> int:
    """Give up on dead entries of a target for good (no commit): they become ``discarded``.

    Discarded entries are never delivered; they are kept (with their error) until a
    prune removes them like delivered ones.

    Returns:
        How many were discarded.
    """
    result = session.execute(
        update(OutboxEntry).where(*_dead_selection(target, camera, ids))
        .values(status=OutboxStatus.DISCARDED.value, dead_at=now)
    )
    return int(result.rowcount)


@dataclass
class PrunedOutbox:
    """What :func:`prune_finished` deleted (or, on a dry run, would delete)."""

    entries: int = 0
    alerts: int = 0


FINISHED = (OutboxStatus.DELIVERED.value, OutboxStatus.DISCARDED.value)


def _finished_before(cutoff: datetime) -> Any:
    finished_at = func.coalesce(col(OutboxEntry.delivered_at), col(OutboxEntry.dead_at), col(OutboxEntry.created_at))
    return and_(col(OutboxEntry.status).in_(FINISHED), col(OutboxEntry.created_at) < cutoff, finished_at < cutoff)


def _alert_without_entries(cutoff: datetime) -> Any:
    has_entry = exists().where(col(OutboxEntry.alert_id) == col(Alert.id))
    return and_(col(Alert.created_at) < cutoff, not_(has_entry))


def alerts_pruned_by(cutoff: datetime) -> Any:
    """The condition on :class:`Alert` true for the alerts :func:`prune_finished` at ``cutoff``
    deletes: older than the cutoff, with every entry (if any) finished before it."""
    unfinished = exists().where(col(OutboxEntry.alert_id) == col(Alert.id), not_(_finished_before(cutoff)))
    return and_(col(Alert.created_at) < cutoff, not_(unfinished))


def prune_finished(*, session: Session, cutoff: datetime, batch: int = 500, dry_run: bool = False) -> PrunedOutbox:
    """Delete delivered and discarded entries finished before ``cutoff``, then alerts left without entries.

    Pending and dead entries are never deleted, and neither is their alert. Commits
    after each batch (keyset on id, so each batch makes progress); each DELETE checks
    the status again, so an entry requeued meanwhile is kept.

    Args:
        session: an open session; committed per batch.
        cutoff: entries created and finished (delivered, discarded) before this go.
        batch: rows per transaction.
        dry_run: only count.

    Returns:
        How many entries and alerts were deleted.
    """
    report = PrunedOutbox()
    entries, alerts = _finished_before(cutoff), _alert_without_entries(cutoff)
    if dry_run:
        report.entries = int(session.exec(select(func.count()).select_from(OutboxEntry).where(entries)).one())
        report.alerts = int(session.exec(select(func.count()).select_from(Alert).where(alerts_pruned_by(cutoff))).one())
        return report
    for table, condition in ((OutboxEntry, entries), (Alert, alerts)):
        last = 0
        while True:
            ids = list(session.exec(select(table.id).where(condition, col(table.id) > last)
                                    .order_by(col(table.id)).limit(batch)).all())
            if not ids:
                break
            last = int(ids[-1])
            deleted = session.execute(delete(table).where(col(table.id).in_(ids), condition)).rowcount
            session.commit()
            if table is OutboxEntry:
                report.entries += int(deleted)
            else:
                report.alerts += int(deleted)
    return report
