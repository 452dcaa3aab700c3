"""Retention: delete old review items nobody needs, with their snapshots.

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
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, exists, func, not_, or_
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, select

from monitor.store import SnapshotNotFound, SnapshotStore, StoreError
from monitor.store.db import one_line
from monitor.store.tables import ReviewDecision, ReviewItem, ReviewStatus, utcnow
from monitor.types import QueueReason

log = logging.getLogger(__name__)

BATCH = 500


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
