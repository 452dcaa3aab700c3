"""Queries on the alert outbox: adding alerts with their entries, finding what to deliver.

Responsible for the database side of notifications. :func:`add_alerts` adds an alert
and one outbox entry per target of its site to the caller's session without committing,
so they commit (or roll back) with the review rows of the same still. The dispatcher
(:mod:`monitor.notify`) asks :func:`due_heads` for the oldest pending entry of each
(target, camera) whose retry time has come, delivers it, and records the result with
:func:`mark_delivered` or :func:`mark_failed`. Only the oldest pending entry of a
camera is ever handed out, which is what keeps delivery in order per camera.

Every function takes the session as a keyword and never commits, except where noted.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, Protocol

from sqlalchemy import func, update
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


def pending_by_target(*, session: Session) -> dict[str, int]:
    """How many entries wait for delivery, per target."""
    statement = (
        select(OutboxEntry.target, func.count())
        .where(col(OutboxEntry.status) == OutboxStatus.PENDING.value)
        .group_by(OutboxEntry.target)
    )
    return {target: int(count) for target, count in session.exec(statement).all()}
