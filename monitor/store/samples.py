"""Pruning the ``samples`` table: rows the once-per-still guarantee no longer needs.

Responsible for deleting old rows of :class:`monitor.store.cluster_tables.SampleRow`,
in batches, without ever weakening what the table guarantees. Its primary key (camera,
capture time, origin) is how the recorder (:mod:`monitor.store.recording`) drops a
still that was already recorded; a deleted row means that still, sampled again, would
be recorded again: another review item, another alert. So only the caller's choice of
cameras is pruned: those whose stills carry the wall-clock time at which they were
sampled (see :func:`monitor.retention.wall_clock_cameras`), which can never be sampled
again once they are older than any retry. Rows of a still that has an alert are kept
while the alert exists, because the recorder would otherwise try to insert that alert
(whose key is unique) a second time.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, exists, func, literal, not_, select, tuple_
from sqlmodel import Session

from monitor.store.cluster_tables import Alert, SampleRow

_SAMPLES = SampleRow.__table__  # type: ignore[attr-defined]
_ALERTS = Alert.__table__  # type: ignore[attr-defined]
_KEY = (_SAMPLES.c.camera_id, _SAMPLES.c.captured_at, _SAMPLES.c.origin)


def _prunable(cameras: Collection[str], cutoff: datetime, alerts_gone: Any = None) -> Any:
    alerted = exists().where(_ALERTS.c.camera_id == _SAMPLES.c.camera_id,
                             _ALERTS.c.captured_at == _SAMPLES.c.captured_at)
    if alerts_gone is not None:
        alerted = alerted.where(not_(alerts_gone))
    # Both times: a still recorded recently is kept even if its capture time is old.
    return and_(_SAMPLES.c.camera_id.in_(list(cameras)), _SAMPLES.c.captured_at < cutoff,
                _SAMPLES.c.recorded_at < cutoff, not_(alerted))


def prune_samples(
    *, session: Session, cameras: Collection[str], cutoff: datetime, batch: int = 1000, dry_run: bool = False,
    alerts_gone: Any = None,
) -> int:
    """Delete samples rows of ``cameras`` captured and recorded before ``cutoff``; commits per batch.

    Args:
        session: an open session; committed after each batch.
        cameras: the cameras whose rows may go (never pass a folder or a non-replayed
            video file: their stills keep their old capture times when read again).
        cutoff: rows captured and recorded before this go.
        batch: rows per transaction (keyset on the primary key).
        dry_run: only count.
        alerts_gone: a condition on alerts that a prune run just before this one deletes
            (a dry run, which deletes nothing, counts their stills' rows as gone too).

    Returns:
        How many rows were deleted (or would be).
    """
    if not cameras:
        return 0
    condition = _prunable(cameras, cutoff, alerts_gone)
    if dry_run:
        return int(session.execute(select(func.count()).select_from(_SAMPLES).where(condition)).scalar_one())
    deleted = 0
    last: tuple | None = None
    while True:
        statement = select(*_KEY).where(condition)
        if last is not None:
            statement = statement.where(tuple_(*_KEY) > tuple_(*(literal(v, c.type) for v, c in zip(last, _KEY))))
        rows = [tuple(row) for row in session.execute(statement.order_by(*_KEY).limit(batch)).all()]
        if not rows:
            return deleted
        last = rows[-1]
        deleted += int(session.execute(delete(_SAMPLES).where(tuple_(*_KEY).in_(rows), condition)).rowcount)
        session.commit()
