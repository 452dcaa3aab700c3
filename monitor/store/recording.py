"""Recording what `monitor run` classified: once per still, only by the camera's holder, with its alerts.

Responsible for the one transaction in which a batch of routed stills is stored by a
live worker. It wraps :func:`monitor.store.queue.record_predictions` (review items and
hourly counts) and adds, in the same transaction:

1. **Fencing**: with leases, records of cameras this worker no longer holds (its lease
   token differs from the database's) are dropped. On PostgreSQL the lease rows are read
   ``FOR SHARE``, so no other worker can take the camera until this transaction ends.
   SQLite has no row locks: there a claim can slip in between the check and the commit,
   so a worker that just lost a camera may store one more batch of it (the samples key
   still keeps every still to one row); many workers belong on PostgreSQL anyway.
2. **Once per still**: a ``samples`` row per still, inserted with ``ON CONFLICT DO
   NOTHING ... RETURNING``; stills already recorded (a retry after a commit whose
   answer was lost, or a second worker on the same footage) are dropped, snapshots and
   all. The primary key (camera, capture time, origin) is the guarantee, not the code.
3. **Alerts and their outbox entries** (:func:`monitor.store.outbox.add_alerts`), so an
   alert exists exactly when its still was recorded, and its notification cannot be
   lost between the commit and the send.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone

from sqlalchemy import select
from sqlalchemy.engine import Engine

from monitor.store.cluster_tables import CameraLease, SampleRow
from monitor.store.bulk import insert_rows
from monitor.store.db import session_scope
from monitor.store.outbox import add_alerts
from monitor.store.queue import PredictionRecord, record_predictions
from monitor.store.snapshots import SnapshotStore

log = logging.getLogger(__name__)

_SAMPLES = SampleRow.__table__  # type: ignore[attr-defined]
_SAMPLE_KEY = ("camera_id", "captured_at", "origin")
Clock = Callable[[], datetime]
# camera id -> the lease token this worker holds for it
Fence = Callable[[], Mapping[str, int]]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Recorder:
    """Stores batches of outcomes for a live worker; pass it to the pipeline as ``persist``.

    Args:
        engine: the store's engine.
        snapshots: where the JPEGs go.
        targets_by_site: site id -> notify target names its alerts go to.
        worker: this worker's name (None for a single process without leases).
        clock: the wall clock (UTC), injectable for tests.
        on_alerts: called after a commit that added outbox entries (wakes the dispatcher).

    Attributes:
        fence: set by the lease manager: returns the cameras this worker holds with
            their tokens. None means no leases: every camera is this process's.
        duplicates: stills dropped because they were already recorded.
        fenced: stills dropped because their camera was no longer held.
    """

    def __init__(
        self,
        engine: Engine,
        snapshots: SnapshotStore,
        *,
        targets_by_site: Mapping[str, Sequence[str]] | None = None,
        worker: str | None = None,
        clock: Clock = utcnow,
        on_alerts: Callable[[], None] | None = None,
    ) -> None:
        self._engine = engine
        self._snapshots = snapshots
        self._targets = {site: list(names) for site, names in (targets_by_site or {}).items()}
        self._worker = worker
        self._clock = clock
        self.on_alerts = on_alerts
        self.fence: Fence | None = None
        self._lock = threading.Lock()
        self.duplicates = 0
        self.fenced = 0

    def __call__(self, records: Sequence[PredictionRecord]) -> list[int]:
        """Store one batch; returns the ids of the new review items.

        Raises:
            StoreError: the transaction failed (the pipeline keeps the batch and retries).
        """
        records = list(records)
        if not records:
            return []
        alerts = 0
        with session_scope(self._engine) as session:
            records = self._held(records, session)
            records = self._first_time(records, session)
            if records:
                alerts = len(add_alerts(records, session=session, targets_by_site=self._targets,
                                        worker=self._worker, now=self._clock()))
            ids = record_predictions(records, session=session, snapshots=self._snapshots) if records else []
        if alerts and self.on_alerts is not None:
            self.on_alerts()
        return ids

    def _held(self, records: list[PredictionRecord], session) -> list[PredictionRecord]:
        if self.fence is None:
            return records
        held = dict(self.fence())
        cameras = sorted({r.frame.camera_id for r in records})
        statement = select(CameraLease.camera_id, CameraLease.token).where(
            CameraLease.camera_id.in_(cameras), CameraLease.owner == self._worker
        )
        if session.get_bind().dialect.name == "postgresql":
            statement = statement.with_for_update(read=True)
        in_db = dict(session.execute(statement).all())
        valid = {camera for camera in cameras if camera in held and in_db.get(camera) == held[camera]}
        kept = [r for r in records if r.frame.camera_id in valid]
        if len(kept) < len(records):
            with self._lock:
                self.fenced += len(records) - len(kept)
            log.warning("dropped %d still(s) of camera(s) %s: this worker no longer holds their lease",
                        len(records) - len(kept), ", ".join(sorted(set(cameras) - valid)))
        return kept

    def _first_time(self, records: list[PredictionRecord], session) -> list[PredictionRecord]:
        if not records:
            return records
        now = self._clock()
        unique: dict[tuple[str, datetime, str], PredictionRecord] = {}
        for record in records:
            unique.setdefault((record.frame.camera_id, record.frame.captured_at, record.frame.origin), record)
        rows = [
            {"camera_id": camera, "captured_at": captured_at, "origin": origin, "worker": self._worker,
             "recorded_at": now}
            for camera, captured_at, origin in unique
        ]
        # ON CONFLICT DO NOTHING ... RETURNING: only the stills recorded for the first time come back.
        inserted = {
            tuple(row) for row in insert_rows(
                _SAMPLES, rows, session=session, returning=_SAMPLE_KEY, skip_existing=_SAMPLE_KEY
            )
        }
        kept = [record for key, record in unique.items() if key in inserted]
        dropped = len(records) - len(kept)
        if dropped:
            with self._lock:
                self.duplicates += dropped
            log.info("dropped %d still(s) already recorded", dropped)
        return kept

