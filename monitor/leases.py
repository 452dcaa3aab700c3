"""Camera leases: many `monitor run --worker NAME` processes share the cameras of one database.

Responsible for deciding which worker samples which camera. Each camera has one row in
``camera_leases``; a worker holds a camera while the row names it and ``expires_at`` is
in the future. A heartbeat thread, every ``heartbeat`` seconds:

1. renews this worker's row in ``workers`` and the leases it holds (a renewal that
   finds the lease taken or its token changed means the camera was lost: sampling of
   it stops at once);
2. counts the live workers and aims to hold ``ceil(cameras / live workers)`` cameras;
3. releases cameras beyond that share (after one heartbeat of draining, so stills
   already sampled are still recorded) and claims free or expired ones up to it.
   PostgreSQL: ``SELECT ... FOR UPDATE SKIP LOCKED``, so workers claiming at the same
   moment never wait for or fight over the same row; SQLite: a compare-and-set
   ``UPDATE ... WHERE owner IS NULL OR expires_at < now``.

Every claim bumps the lease's ``token``; the recorder (:mod:`monitor.store.recording`)
only records stills of cameras whose token in the database is still the one this worker
got, so a worker that was paused past its lease cannot record over the new holder.
If renewals keep failing (database unreachable), the worker stops sampling a camera
once its lease could have expired, before another worker can take it over.

A killed worker's cameras are taken over within ``lease_ttl + heartbeat``. Time comes
from each worker's clock (injectable): hosts must keep their clocks in sync (NTP);
a skew far below ``lease_ttl`` is harmless.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta, timezone

from sqlalchemy import delete, func, select, update
from sqlalchemy.engine import Connection, Engine

from monitor.store.cluster_tables import CameraLease, WorkerRow
from monitor.store.db import StoreError, dialect_insert, one_line

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
_LEASES = CameraLease.__table__  # type: ignore[attr-defined]
_WORKERS = WorkerRow.__table__  # type: ignore[attr-defined]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def fair_share(cameras: int, live_workers: int) -> int:
    """How many cameras each worker aims to hold: the cameras split evenly, rounded up."""
    return math.ceil(cameras / max(1, live_workers))


class LeaseManager:
    """Claims, renews and releases this worker's camera leases on a heartbeat thread.

    Args:
        engine: the shared database (PostgreSQL for many hosts; SQLite works on one).
        worker: this worker's unique name.
        cameras: ids of every camera to share (enabled and configured, in order).
        ttl: seconds a lease lasts without renewal.
        heartbeat: seconds between renewals; at most a third of ``ttl``.
        on_acquired: called with a camera id when this worker starts holding it.
        on_released: called with a camera id when it must stop sampling it (lost,
            released for balance, or possibly expired).
        clock: wall clock (UTC), injectable for tests.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        worker: str,
        cameras: Sequence[str],
        ttl: float,
        heartbeat: float,
        on_acquired: Callable[[str], None],
        on_released: Callable[[str], None],
        clock: Clock = utcnow,
    ) -> None:
        if heartbeat * 3 > ttl:
            raise ValueError("heartbeat must be at most a third of the lease ttl")
        self._engine = engine
        self.worker = worker
        self._cameras = list(dict.fromkeys(cameras))
        self._ttl = timedelta(seconds=ttl)
        self._heartbeat = heartbeat
        self._on_acquired = on_acquired
        self._on_released = on_released
        self._clock = clock
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}  # camera -> token, sampled by this worker
        self._draining: dict[str, int] = {}  # camera -> token, no longer sampled, released next tick
        self._valid_until: dict[str, datetime] = {}  # last renewal + ttl, by this worker's clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="leases", daemon=True)

    # ------------------------------------------------------------------ views

    def held(self) -> dict[str, int]:
        """Cameras whose stills this worker may record (held or draining) -> lease token."""
        with self._lock:
            return {**self._draining, **self._held}

    def sampling(self) -> list[str]:
        """Cameras this worker samples now."""
        with self._lock:
            return sorted(self._held)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Register this worker and the cameras, take a first share now, then keep going.

        Raises:
            StoreError: the database cannot be used.
        """
        try:
            with self._engine.begin() as connection:
                insert = dialect_insert(connection.dialect.name)
                rows = [{"camera_id": camera} for camera in self._cameras]
                if rows:
                    connection.execute(insert(_LEASES).values(rows).on_conflict_do_nothing(
                        index_elements=["camera_id"]))
        except Exception as exc:
            raise StoreError(f"cannot register the cameras' leases: {one_line(exc)}") from None
        self.tick()
        self._thread.start()

    def stop(self, *, release: bool = True) -> None:
        """Stop the heartbeat; with ``release``, hand every camera back at once.

        Call after sampling stopped and the pipeline stored what was sampled, so another
        worker can take the cameras over immediately instead of after the ttl.
        """
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self._heartbeat + 5)
        if not release:
            return
        mine = self.held()
        with self._lock:
            self._held.clear()
            self._draining.clear()
        try:
            with self._engine.begin() as connection:
                self._release(connection, mine)
                connection.execute(delete(_WORKERS).where(_WORKERS.c.name == self.worker))
            log.info("worker %s released %d camera(s)", self.worker, len(mine))
        except Exception as exc:  # the leases then simply expire
            log.warning("could not release the leases of worker %s: %s", self.worker, one_line(exc))

    def _run(self) -> None:
        while not self._stop.wait(self._heartbeat):
            self.tick()

    # ------------------------------------------------------------------ one heartbeat

    def tick(self) -> None:
        """One heartbeat: renew, rebalance, claim. Never raises; failures are logged.

        The database work is one transaction; this worker's own view of what it holds
        changes only after that transaction committed.
        """
        now = self._clock()
        with self._lock:
            sampling, draining = dict(self._held), dict(self._draining)
        try:
            with self._engine.begin() as connection:
                self._beat(connection, now)
                renewed = self._renew(connection, now, {**draining, **sampling})
                self._release(connection, draining)
                live = self._live_workers(connection, now)
                share = fair_share(len(self._cameras), live)
                kept = [camera for camera, token in sampling.items() if (camera, token) in renewed]
                busy = set(sampling) | set(draining)
                wanted = share - len(kept)
                acquired = self._claim(connection, now, wanted, busy) if wanted > 0 else {}
        except Exception as exc:
            log.warning("worker %s: lease heartbeat failed: %s", self.worker, one_line(exc))
            log.debug("lease heartbeat failure", exc_info=True)
            self._expire_locally(now)
            return
        lost = [camera for camera in sampling if camera not in kept]
        with self._lock:
            for camera in [*draining, *lost]:
                self._draining.pop(camera, None)
                self._held.pop(camera, None)
                self._valid_until.pop(camera, None)
            for camera in kept:
                self._valid_until[camera] = now + self._ttl
        for camera in lost:
            log.warning("worker %s lost camera %s to another worker", self.worker, camera)
            self._on_released(camera)
        for camera in self._pick_surplus(share):
            log.info("worker %s hands camera %s over (fair share %d of %d live worker(s))",
                     self.worker, camera, share, live)
            self._on_released(camera)
        for camera, token in acquired.items():
            with self._lock:
                self._held[camera] = token
                self._valid_until[camera] = now + self._ttl
            log.info("worker %s took camera %s (lease %d)", self.worker, camera, token)
            self._on_acquired(camera)

    def _beat(self, connection: Connection, now: datetime) -> None:
        insert = dialect_insert(connection.dialect.name)
        statement = insert(_WORKERS).values(
            name=self.worker, hostname=socket.gethostname(), pid=os.getpid(), started_at=now,
            expires_at=now + self._ttl,
        )
        connection.execute(statement.on_conflict_do_update(
            index_elements=["name"], set_={"expires_at": statement.excluded.expires_at,
                                           "hostname": statement.excluded.hostname, "pid": statement.excluded.pid},
        ))

    def _renew(self, connection: Connection, now: datetime, mine: Mapping[str, int]) -> set[tuple[str, int]]:
        """Extend every lease still ours; returns the (camera, token) pairs renewed."""
        if not mine:
            return set()
        rows = connection.execute(
            update(_LEASES)
            .where(_LEASES.c.camera_id.in_(list(mine)), _LEASES.c.owner == self.worker)
            .values(expires_at=now + self._ttl)
            .returning(_LEASES.c.camera_id, _LEASES.c.token)
        ).all()
        return {(str(camera), int(token)) for camera, token in rows if mine.get(camera) == int(token)}

    def _release(self, connection: Connection, cameras: Mapping[str, int]) -> list[str]:
        released = []
        for camera, token in cameras.items():
            result = connection.execute(
                update(_LEASES)
                .where(_LEASES.c.camera_id == camera, _LEASES.c.owner == self.worker, _LEASES.c.token == token)
                .values(owner=None, expires_at=None)
            )
            if result.rowcount:
                released.append(camera)
        return released

    def _live_workers(self, connection: Connection, now: datetime) -> int:
        return int(connection.execute(
            select(func.count()).select_from(_WORKERS).where(_WORKERS.c.expires_at > now)
        ).scalar_one())

    def _pick_surplus(self, share: int) -> list[str]:
        """Move the cameras beyond the fair share to draining (released next heartbeat)."""
        with self._lock:
            extra = len(self._held) - share
            if extra <= 0:
                return []
            surplus = sorted(self._held)[-extra:]
            for camera in surplus:
                self._draining[camera] = self._held.pop(camera)
            return surplus

    def _claim(self, connection: Connection, now: datetime, wanted: int, busy: set[str]) -> dict[str, int]:
        free = (_LEASES.c.owner.is_(None)) | (_LEASES.c.expires_at.is_(None)) | (_LEASES.c.expires_at < now)
        candidates = (
            select(_LEASES.c.camera_id)
            .where(_LEASES.c.camera_id.in_([c for c in self._cameras if c not in busy]), free)
            .order_by(_LEASES.c.camera_id)
            .limit(wanted)
        )
        claim = dict(owner=self.worker, token=_LEASES.c.token + 1, expires_at=now + self._ttl, acquired_at=now)
        if connection.dialect.name == "postgresql":
            # Rows another worker is claiming right now are skipped, not waited for.
            chosen = list(connection.execute(candidates.with_for_update(skip_locked=True)).scalars())
            if not chosen:
                return {}
            rows = connection.execute(
                update(_LEASES).where(_LEASES.c.camera_id.in_(chosen)).values(**claim)
                .returning(_LEASES.c.camera_id, _LEASES.c.token)
            ).all()
            return {str(camera): int(token) for camera, token in rows}
        acquired: dict[str, int] = {}
        for camera in connection.execute(candidates).scalars():
            # Compare-and-set: only if it is still free when the write happens.
            row = connection.execute(
                update(_LEASES).where(_LEASES.c.camera_id == camera, free).values(**claim)
                .returning(_LEASES.c.token)
            ).first()
            if row is not None:
                acquired[camera] = int(row[0])
        return acquired

    def _expire_locally(self, now: datetime) -> None:
        """Without renewals, stop sampling a camera before its lease can expire elsewhere."""
        margin = timedelta(seconds=self._heartbeat)
        with self._lock:
            expiring = [camera for camera, until in self._valid_until.items() if until - margin <= now]
            for camera in expiring:
                self._held.pop(camera, None)
                self._draining.pop(camera, None)
                self._valid_until.pop(camera, None)
        for camera in expiring:
            log.warning("worker %s stops sampling camera %s: its lease could not be renewed", self.worker, camera)
            self._on_released(camera)


def lease_table(engine: Engine) -> Iterator[tuple[str, str | None, int, datetime | None]]:
    """Every lease as (camera, owner, token, expires_at), for `monitor db`-style listings and tests."""
    with engine.connect() as connection:
        yield from connection.execute(
            select(_LEASES.c.camera_id, _LEASES.c.owner, _LEASES.c.token, _LEASES.c.expires_at)
            .order_by(_LEASES.c.camera_id)
        ).all()
