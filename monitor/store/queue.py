"""Queries on the store: config sync, recording predictions, hourly counts, the review queue.

Responsible for every read and write the rest of the system makes on the store's tables.
All functions take the session as a keyword (``*, session``) and never create engines.
Writers commit (each call is one unit of work); readers do not.

The invariant :func:`record_predictions` keeps: a review item row exists only with its
snapshot file, and a snapshot file exists only with its row. Files are written first
(atomically); if the transaction then fails, the files written for it are deleted.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import func
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, SQLModel, col, select

from monitor.config import MonitorConfig
from monitor.redact import redact_url
from monitor.store.bulk import add_counts, insert_rows
from monitor.store.db import StoreError, one_line
from monitor.store.snapshots import SnapshotRequest, SnapshotStore
from monitor.store.tables import (
    Camera,
    CameraHour,
    ConfidenceHour,
    LabelHour,
    ReviewItem,
    ReviewStatus,
    Site,
    confidence_bucket,
    utc_hour,
    utcnow,
)
from monitor.types import Frame, Prediction, Route

log = logging.getLogger(__name__)

MAX_PAGE = 1000
_REVIEW_ITEMS = ReviewItem.__table__  # type: ignore[attr-defined]


class PredictionRecord(Protocol):
    """What :func:`record_predictions` needs of each record (e.g. ``monitor.types.Outcome``)."""

    site_id: str
    frame: Frame
    prediction: Prediction
    route: Route


def sync_sites_and_cameras(config: MonitorConfig, *, session: Session) -> None:
    """Make the sites and cameras tables match the config, then commit.

    Cameras that left the config are disabled, not deleted: review items refer to them.
    Only the redacted URL is stored, never the URL with credentials.

    Args:
        config: the validated config.
        session: an open session.

    Raises:
        StoreError: the database refused the change.
    """
    try:
        for site in config.sites:
            site_row = session.get(Site, site.id) or Site(id=site.id, name=site.name or site.id)
            site_row.name = site.name or site.id
            session.add(site_row)
        session.flush()  # sites before the cameras that reference them
        configured: set[str] = set()
        for site in config.sites:
            for camera in site.cameras:
                configured.add(camera.id)
                row = session.get(Camera, camera.id)
                if row is None:
                    row = Camera(id=camera.id, site_id=site.id, name="", url_display="")
                row.site_id = site.id
                row.name = camera.display_name
                row.url_display = redact_url(camera.location)
                row.enabled = camera.enabled
                session.add(row)
        for row in session.exec(select(Camera).where(col(Camera.id).not_in(configured))):
            row.enabled = False
            session.add(row)
        session.commit()
    except SQLAlchemyError as exc:
        session.rollback()
        raise StoreError(f"cannot save sites and cameras: {one_line(exc)}") from exc


def record_predictions(records: Iterable[PredictionRecord], *, session: Session, snapshots: SnapshotStore) -> list[int]:
    """Store a batch of routed predictions: queued ones as review items, all as counts.

    Every record adds one to its camera's hourly ``frames`` and to its label's hourly
    ``predictions`` (and ``positives`` when positive), in the same transaction; records
    with ``ood_reasons`` or ``alert_episode`` (see :class:`monitor.types.Outcome`) also
    add to ``out_of_domain`` / ``alert_episodes``, and each confidence to its bucket in
    ``confidence_hours``.

    Snapshots of the queued records are written first; then all rows and the hourly
    label counts go in one transaction, which is committed. If anything fails, the
    snapshots written by this call are deleted again, so there is never a file without
    a row or a row without a file.

    Args:
        records: objects with ``site_id``, ``frame``, ``prediction`` and ``route``
            (e.g. :class:`monitor.types.Outcome`).
        session: an open session; it is committed (or rolled back on failure).
        snapshots: where the JPEGs go.

    Returns:
        The ids of the new review items, in record order.

    Raises:
        StoreError: a snapshot could not be written or the transaction failed.
    """
    records = list(records)
    queued = [r for r in records if r.route.review_reason is not None]
    # Files first, in one durable batch; deleted again if the rows do not commit.
    written = snapshots.save_many([
        SnapshotRequest(r.frame.image, r.site_id, r.frame.camera_id, r.frame.captured_at) for r in queued
    ])
    created_at = utcnow()
    items = [_item_row(record, snapshot, created_at) for record, snapshot in zip(queued, written)]
    counts = [
        {
            "camera_id": r.frame.camera_id,
            "hour": utc_hour(r.frame.captured_at),
            "label": r.prediction.label,
            "predictions": 1,
            "positives": int(r.route.positive),
        }
        for r in records
    ]
    try:
        # Plain rows in one statement, not ORM objects (3x cheaper per item); ids come
        # back in no particular order, so they are matched up by the (unique) snapshot.
        inserted = insert_rows(_REVIEW_ITEMS, items, session=session, returning=("snapshot", "id"))
        ids = [int(row_id) for row_id in map(dict(inserted).__getitem__, written)]
        upsert_increments(LabelHour, counts, keys=("camera_id", "hour", "label"), session=session)
        frames = [
            {
                "camera_id": c["camera_id"], "hour": c["hour"], "frames": 1,
                # the drift detector's hourly counts (monitor.drift)
                "out_of_domain": int(bool(getattr(r, "ood_reasons", ()))),
                "alert_episodes": int(bool(getattr(r, "alert_episode", False))),
            }
            for c, r in zip(counts, records)
        ]
        upsert_increments(CameraHour, frames, keys=("camera_id", "hour"), session=session)
        confidences = [
            {"camera_id": c["camera_id"], "hour": c["hour"], "bucket": confidence_bucket(r.prediction.confidence),
             "predictions": 1}
            for c, r in zip(counts, records)
        ]
        upsert_increments(ConfidenceHour, confidences, keys=("camera_id", "hour", "bucket"), session=session)
        session.commit()
    except BaseException as exc:
        _rollback_quietly(session)
        _discard(snapshots, written)
        if isinstance(exc, SQLAlchemyError):
            log.debug("storing %d predictions failed", len(records), exc_info=True)
            raise StoreError(f"cannot store {len(records)} predictions: {one_line(exc)}") from exc
        raise
    return ids


def _item_row(record: PredictionRecord, snapshot: str, created_at: datetime) -> dict[str, Any]:
    """The ``review_items`` row of a queued record, every column given (Core inserts
    skip the model's Python-side defaults)."""
    frame, prediction = record.frame, record.prediction
    return {
        "site_id": record.site_id,
        "camera_id": frame.camera_id,
        "captured_at": frame.captured_at,
        "media_ts": frame.media_ts,
        "label": prediction.label,
        "confidence": float(prediction.confidence),
        "probabilities": {k: float(v) for k, v in prediction.probabilities.items()},
        "model_id": prediction.model_id,
        "crop": list(prediction.crop) if prediction.crop is not None else None,
        "ood_reasons": list(getattr(record, "ood_reasons", ())),
        "review_label": None,
        "reviewed_at": None,
        "reason": record.route.review_reason.value,
        "status": ReviewStatus.PENDING.value,
        "snapshot": snapshot,
        "created_at": created_at,
        "version": 0,
    }


def add_frame_counts(
    camera_id: str,
    hour: datetime,
    *,
    frames: int = 0,
    failed: int = 0,
    dropped: int = 0,
    session: Session,
) -> None:
    """Add to a camera's hourly counts of stills sampled, failed and dropped, then commit.

    Args:
        camera_id: a camera already synced from the config.
        hour: any aware datetime inside the hour (it is truncated to the UTC hour).
        frames: stills classified (record_predictions already counts its records).
        failed: stills the source failed to deliver.
        dropped: samples dropped by back-pressure before classification.
        session: an open session; it is committed.

    Raises:
        ValueError: a negative count or a naive datetime.
        StoreError: the database refused (e.g. an unknown camera).
    """
    if min(frames, failed, dropped) < 0:
        raise ValueError("frame counts must not be negative")
    if not (frames or failed or dropped):
        return
    row = {"camera_id": camera_id, "hour": utc_hour(hour), "frames": frames, "failed": failed, "dropped": dropped}
    try:
        upsert_increments(CameraHour, [row], keys=("camera_id", "hour"), session=session)
        session.commit()
    except SQLAlchemyError as exc:
        _rollback_quietly(session)
        raise StoreError(f"cannot count frames for camera {camera_id!r}: {one_line(exc)}") from exc


def upsert_increments(
    model: type[SQLModel], rows: Sequence[Mapping[str, Any]], *, keys: Sequence[str], session: Session
) -> None:
    """Insert counter rows, or add their counts to the rows already there (no commit).

    One ``INSERT ... ON CONFLICT (keys) DO UPDATE SET n = n + excluded.n`` statement on
    both SQLite and PostgreSQL (see :func:`monitor.store.bulk.add_counts`).

    Args:
        model: a table model whose primary key (or a unique key) is ``keys``.
        rows: dicts with every key column and the counter columns to add.
        keys: the conflict columns.
        session: an open session.

    Raises:
        StoreError: the database dialect has no upsert support here.
    """
    add_counts(model.__table__, rows, keys=keys, session=session)  # type: ignore[attr-defined]


def list_items(
    *,
    session: Session,
    status: ReviewStatus | str | None = None,
    site_id: str | None = None,
    camera_id: str | None = None,
    label: str | None = None,
    limit: int = 50,
    before_id: int | None = None,
) -> list[ReviewItem]:
    """Review items, newest (highest id) first, one page at a time.

    Keyset paging: pass the last id of a page as ``before_id`` to get the next one, so
    a deep page costs the same as the first (no OFFSET scan).

    Args:
        session: an open session.
        status: only items with this status.
        site_id: only items from this site.
        camera_id: only items from this camera.
        label: only items with this predicted label.
        limit: page size, 1 to 1000.
        before_id: only items with a smaller id.

    Returns:
        Up to ``limit`` items; fewer means this was the last page.

    Raises:
        ValueError: an unknown status or a limit out of range.
    """
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE}, got {limit}")
    statement = _filtered(select(ReviewItem), status=status, site_id=site_id, camera_id=camera_id, label=label)
    if before_id is not None:
        statement = statement.where(col(ReviewItem.id) < before_id)
    statement = statement.order_by(col(ReviewItem.id).desc()).limit(limit)
    return list(session.exec(statement).all())


def count_items(
    *,
    session: Session,
    status: ReviewStatus | str | None = None,
    site_id: str | None = None,
    camera_id: str | None = None,
    label: str | None = None,
) -> int:
    """How many review items match the filters (same filters as :func:`list_items`).

    Raises:
        ValueError: an unknown status.
    """
    statement = _filtered(
        select(func.count()).select_from(ReviewItem), status=status, site_id=site_id, camera_id=camera_id, label=label
    )
    return int(session.exec(statement).one())


def get_item(item_id: int, *, session: Session) -> ReviewItem | None:
    """One review item by id, or None when there is none."""
    return session.get(ReviewItem, item_id)


def _filtered(statement: Any, *, status: Any, site_id: str | None, camera_id: str | None, label: str | None) -> Any:
    if status is not None:
        try:
            value = ReviewStatus(status).value
        except ValueError:
            allowed = ", ".join(s.value for s in ReviewStatus)
            raise ValueError(f"unknown status {status!r}; use one of {allowed}") from None
        statement = statement.where(col(ReviewItem.status) == value)
    if site_id is not None:
        statement = statement.where(col(ReviewItem.site_id) == site_id)
    if camera_id is not None:
        statement = statement.where(col(ReviewItem.camera_id) == camera_id)
    if label is not None:
        statement = statement.where(col(ReviewItem.label) == label)
    return statement


def _discard(snapshots: SnapshotStore, written: list[str]) -> None:
    for relative in written:
        try:
            snapshots.delete(relative)
        except StoreError as exc:  # keep going: the other files must go too
            log.error("could not delete snapshot %s of a failed batch: %s", relative, exc)


def _rollback_quietly(session: Session) -> None:
    try:
        session.rollback()
    except SQLAlchemyError:
        log.debug("rollback failed", exc_info=True)
