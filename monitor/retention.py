"""Retention: delete old review items nobody needs, with their snapshots, and old bookkeeping rows.

Responsible for `monitor prune --older-than 30d`. By default only *unreviewed negative
samples* go: stills the model called negative, queued at random so misses can be
measured, that nobody looked at before they aged out. Items with any decision in their
history are kept, and so are unreviewed positives (someone still has to look at them).
``include_reviewed`` also deletes reviewed items older than the cutoff, together with
their decision history.

The hourly counts (``camera_hours``, ``label_hours``) are never touched: baselines and
rollout gates are computed from them, not from the items.

Rows go first, in batches, each batch one transaction whose DELETE re-checks the
conditions (so an item a reviewer decides while the prune runs is kept); a batch's files
are deleted after its commit. A crash between the two leaves orphan files, never a row
without its file.

:func:`prune_history` does the same for the rows `monitor run` keeps per alert and per
still, which would otherwise grow forever:

* outbox entries delivered (or discarded by an operator) before the cutoff, and then
  alerts older than the cutoff left without entries. Pending and dead entries, and
  their alerts, are never deleted: a dead letter stays until someone requeues or
  discards it.
* ``samples`` rows, after their own, shorter period (``samples_older_than``, 2 days by
  default, at least an hour), and only of cameras whose stills carry the wall-clock
  time at which they were sampled (:func:`wall_clock_cameras`: streams, and video files
  replayed at real time). Such a still can only be offered for recording again while
  it is still in a worker's memory (a retried batch, seconds to minutes), so its row is
  not needed after that. A folder of stills (a camera-trap card) or a video file read
  without ``replay`` gives its stills the capture times in the files, and a restarted
  worker reads the files again: their rows are what keeps those stills from being
  recorded (and alerted) a second time, so they are kept for as long as the camera is
  configured that way. Rows of cameras no longer in the config are kept too (what they
  were is unknown).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import and_, delete, exists, func, not_, or_
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, select

from monitor.store import SnapshotNotFound, SnapshotStore, StoreError
from monitor.store.db import one_line
from monitor.store.outbox import alerts_pruned_by, prune_finished
from monitor.store.samples import prune_samples
from monitor.store.tables import ReviewDecision, ReviewItem, ReviewStatus, utcnow
from monitor.types import QueueReason

log = logging.getLogger(__name__)

BATCH = 500
SAMPLES_OLDER_THAN = timedelta(days=2)
# Far longer than a still of a live camera can wait between sampling and recording.
MIN_SAMPLES_OLDER_THAN = timedelta(hours=1)


@dataclass
class PruneReport:
    """What a prune did (or, on a dry run, would do)."""

    cutoff: datetime
    items: int = 0
    snapshots: int = 0
    missing_snapshots: int = 0
    dry_run: bool = False


def prunable(*, cutoff: datetime, include_reviewed: bool) -> Any:
    """The WHERE clause selecting the review items a prune deletes.

    Args:
        cutoff: items captured before this (aware) time are old enough.
        include_reviewed: also reviewed items (and negative samples with any history).
    """
    has_history = exists().where(col(ReviewDecision.item_id) == col(ReviewItem.id))
    pending = col(ReviewItem.status) == ReviewStatus.PENDING.value
    negative = col(ReviewItem.reason) == QueueReason.NEGATIVE_SAMPLE.value
    unreviewed_negative = and_(negative, pending, not_(has_history))
    wanted = or_(unreviewed_negative, not_(pending), and_(negative, pending)) if include_reviewed else unreviewed_negative
    return and_(col(ReviewItem.captured_at) < cutoff, wanted)


def prune(
    *,
    session: Session,
    snapshots: SnapshotStore,
    older_than: timedelta,
    include_reviewed: bool = False,
    dry_run: bool = False,
    now: datetime | None = None,
) -> PruneReport:
    """Delete old review items and their snapshots, a batch per transaction.

    Args:
        session: an open session; each batch is committed.
        snapshots: where the items' JPEGs are.
        older_than: keep items captured more recently than this.
        include_reviewed: also delete reviewed items and their decision history.
        dry_run: only count what would be deleted.
        now: the current time (for tests).

    Returns:
        How many items and files were deleted (or would be, on a dry run).

    Raises:
        ValueError: ``older_than`` is not positive.
        StoreError: the database refused.
    """
    if older_than <= timedelta(0):
        raise ValueError("--older-than must be greater than zero")
    cutoff = (now or utcnow()) - older_than
    condition = prunable(cutoff=cutoff, include_reviewed=include_reviewed)
    report = PruneReport(cutoff=cutoff, dry_run=dry_run)
    if dry_run:
        report.items = int(session.exec(select(func.count()).select_from(ReviewItem).where(condition)).one())
        return report
    last = 0
    while True:
        # Keyset on id, so every batch makes progress even if all its items were decided
        # meanwhile (and so never deleted).
        statement = select(ReviewItem.id).where(condition, col(ReviewItem.id) > last)
        ids = list(session.exec(statement.order_by(col(ReviewItem.id)).limit(BATCH)).all())
        if not ids:
            break
        last = int(ids[-1])
        try:
            if include_reviewed:
                session.execute(delete(ReviewDecision).where(col(ReviewDecision.item_id).in_(ids)))
            # The condition again: an item decided since the SELECT is no longer prunable.
            deleted = session.execute(
                delete(ReviewItem).where(col(ReviewItem.id).in_(ids), condition)
                .returning(ReviewItem.id, ReviewItem.snapshot)
            ).all()
            session.commit()
        except SQLAlchemyError as exc:
            session.rollback()
            raise StoreError(f"cannot prune review items: {one_line(exc)}") from exc
        report.items += len(deleted)
        for _item_id, relative in deleted:
            try:
                if snapshots.delete(relative):
                    report.snapshots += 1
                else:
                    report.missing_snapshots += 1
            except (SnapshotNotFound, StoreError) as exc:
                report.missing_snapshots += 1
                log.warning("could not delete snapshot of a pruned item: %s", exc)
    return report


@dataclass
class HistoryReport:
    """What :func:`prune_history` deleted (or, on a dry run, would delete)."""

    cutoff: datetime
    samples_cutoff: datetime
    notifications: int = 0
    alerts: int = 0
    samples: int = 0
    sample_cameras: list[str] = field(default_factory=list)
    kept_cameras: list[str] = field(default_factory=list)
    dry_run: bool = False


def wall_clock_cameras(config: Any) -> tuple[list[str], list[str]]:
    """Split the configured cameras by whether their ``samples`` rows may be pruned.

    Args:
        config: a :class:`monitor.config.MonitorConfig`.

    Returns:
        (cameras whose stills carry the time they were sampled: streams, and video files
        replayed at real time; cameras whose stills carry the times in their files: folders
        of stills, video files read without ``replay``, and paths that are gone).
    """
    prunable, kept = [], []
    for _site, camera in config.cameras():
        live = camera.url is not None or (camera.replay and Path(str(camera.path)).expanduser().is_file())
        (prunable if live else kept).append(camera.id)
    return prunable, kept


def prune_history(
    *,
    session: Session,
    config: Any,
    older_than: timedelta,
    samples_older_than: timedelta = SAMPLES_OLDER_THAN,
    dry_run: bool = False,
    now: datetime | None = None,
) -> HistoryReport:
    """Delete finished notifications and their alerts, and the samples rows no dedup check needs.

    Args:
        session: an open session; each batch is committed.
        config: the config the workers run with (which cameras are streams).
        older_than: keep notifications and alerts more recent than this.
        samples_older_than: keep samples rows more recent than this (at least an hour).
        dry_run: only count what would be deleted.
        now: the current time (for tests).

    Returns:
        How many rows were deleted (or would be), and which cameras' samples were kept.

    Raises:
        ValueError: a period is too short.
        StoreError: the database refused.
    """
    if older_than <= timedelta(0):
        raise ValueError("--older-than must be greater than zero")
    if samples_older_than < MIN_SAMPLES_OLDER_THAN:
        raise ValueError("--samples-older-than must be at least 1h: a worker may still retry recording "
                         "newer stills, and their samples rows are what keeps them from being recorded twice")
    now = now or utcnow()
    prunable, kept = wall_clock_cameras(config)
    report = HistoryReport(cutoff=now - older_than, samples_cutoff=now - samples_older_than,
                           sample_cameras=prunable, kept_cameras=kept, dry_run=dry_run)
    try:
        outbox = prune_finished(session=session, cutoff=report.cutoff, batch=BATCH, dry_run=dry_run)
        report.samples = prune_samples(session=session, cameras=prunable, cutoff=report.samples_cutoff,
                                       batch=BATCH * 2, dry_run=dry_run,
                                       alerts_gone=alerts_pruned_by(report.cutoff) if dry_run else None)
    except SQLAlchemyError as exc:
        session.rollback()
        raise StoreError(f"cannot prune notifications and samples: {one_line(exc)}") from exc
    report.notifications, report.alerts = outbox.entries, outbox.alerts
    return report
