"""Job leases: a job that must run in one process only runs in the worker holding its lease.

Responsible for electing, among the `monitor run --worker NAME` processes sharing one
database, the one that runs a named job (the drift detector, ``drift``; the rollout gate
evaluation, ``rollout``), and for handing the job over when that worker dies. One row per job in ``job_leases``; a
worker holds the job while the row names it and ``expires_at`` is in the future. A
heartbeat thread, every ``heartbeat`` seconds, renews the lease this worker holds, or
claims it when it is free or expired with a compare-and-set ``UPDATE ... WHERE owner
IS NULL OR expires_at < now`` (atomic on both backends: PostgreSQL re-checks the WHERE
of a row another transaction just changed). Every claim bumps the row's ``token``.

The job asks :meth:`JobLease.holds` before it starts a run, and :meth:`JobLease.confirm`
inside the transaction in which it writes: the row must still carry this worker's
name and token. On PostgreSQL that read is ``FOR SHARE``, so no other worker can claim
the job until the run's transaction ends; a worker paused past its lease therefore
cannot write over its successor's results. (SQLite has no row locks: there a claim can
slip in between the check and the commit; many workers belong on PostgreSQL anyway.)

A killed holder's job is taken over within ``ttl + heartbeat``; a holder stopped with
SIGTERM releases it at once, so another takes it at its next heartbeat. Without
renewals (database unreachable), the holder stops considering itself the holder once
its lease could have expired, before anyone else can claim it. Clocks must be in sync
(NTP), as for camera leases (:mod:`monitor.leases`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

from sqlalchemy import select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from monitor.store.cluster_tables import JobLease as JobLeaseRow
from monitor.store.db import StoreError, dialect_insert, one_line

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
_JOBS = JobLeaseRow.__table__  # type: ignore[attr-defined]
DRIFT_JOB = "drift"
ROLLOUT_JOB = "rollout"  # the periodic gate evaluation (and automatic rollback)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class JobLease:
    """This worker's claim on one job; renewed or claimed on a heartbeat thread.

    Args:
        engine: the shared database.
        job: the job's name (a row in ``job_leases``).
        worker: this worker's unique name.
        ttl: seconds the lease lasts without renewal.
        heartbeat: seconds between renewals or claims; at most a third of ``ttl``.
        on_acquired: called (on the heartbeat thread) when this worker starts holding the job.
        on_lost: called when it stops holding it (taken over, released, or possibly expired).
        clock: wall clock (UTC), injectable for tests.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        job: str,
        worker: str,
        ttl: float,
        heartbeat: float,
        on_acquired: Callable[[], None] | None = None,
        on_lost: Callable[[], None] | None = None,
        clock: Clock = utcnow,
    ) -> None:
        if heartbeat * 3 > ttl:
            raise ValueError("heartbeat must be at most a third of the lease ttl")
        self._engine = engine
        self.job = job
        self.worker = worker
        self._ttl = timedelta(seconds=ttl)
        self._heartbeat = heartbeat
        self._on_acquired = on_acquired
        self._on_lost = on_lost
        self._clock = clock
        self._lock = threading.Lock()
        self._token: int | None = None  # set while this worker holds the job
        self._valid_until: datetime | None = None  # last renewal + ttl, by this worker's clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"job-lease-{job}", daemon=True)

    # ------------------------------------------------------------------ views

    def holds(self) -> bool:
        """Whether this worker holds the job now (by its own clock, with a heartbeat's margin)."""
        with self._lock:
            if self._token is None or self._valid_until is None:
                return False
            return self._clock() < self._valid_until - timedelta(seconds=self._heartbeat)

    def token(self) -> int | None:
        """The fencing token of the lease this worker holds, or None."""
        with self._lock:
            return self._token

    def confirm(self, session: Session) -> bool:
        """Inside the job's transaction: is the lease still this worker's, with its token?

        On PostgreSQL the row stays share-locked until the transaction ends, so the job
        cannot be claimed by another worker while this one writes.
        """
        token = self.token()
        if token is None or not self.holds():
            return False
        statement = select(_JOBS.c.token).where(_JOBS.c.name == self.job, _JOBS.c.owner == self.worker)
        if session.get_bind().dialect.name == "postgresql":
            statement = statement.with_for_update(read=True)
        return session.execute(statement).scalar_one_or_none() == token

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Register the job's row, try to take it now, then keep going on a thread.

        Raises:
            StoreError: the database cannot be used.
        """
        try:
            with self._engine.begin() as connection:
                insert = dialect_insert(connection.dialect.name)
                connection.execute(insert(_JOBS).values(name=self.job).on_conflict_do_nothing(
                    index_elements=["name"]))
        except Exception as exc:
            raise StoreError(f"cannot register the {self.job} job's lease: {one_line(exc)}") from None
        self.tick()
        self._thread.start()

    def stop(self, *, release: bool = True) -> None:
        """Stop the heartbeat; with ``release``, hand the job back at once (after the job stopped)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self._heartbeat + 5)
        with self._lock:
            token, self._token, self._valid_until = self._token, None, None
        if token is None or not release:
            return
        try:
            with self._engine.begin() as connection:
                connection.execute(
                    update(_JOBS).where(_JOBS.c.name == self.job, _JOBS.c.owner == self.worker,
                                        _JOBS.c.token == token)
                    .values(owner=None, expires_at=None)
                )
            log.info("worker %s released the %s job", self.worker, self.job)
        except Exception as exc:  # the lease then simply expires
            log.warning("could not release the %s job of worker %s: %s", self.job, self.worker, one_line(exc))

    def _run(self) -> None:
        while not self._stop.wait(self._heartbeat):
            self.tick()

    # ------------------------------------------------------------------ one heartbeat

    def tick(self) -> None:
        """Renew the lease, or claim it when free; never raises (failures are logged)."""
        now = self._clock()
        with self._lock:
            held = self._token
        try:
            with self._engine.begin() as connection:
                token = self._renew(connection, now, held) if held is not None else self._claim(connection, now)
        except Exception as exc:
            log.warning("worker %s: %s job lease heartbeat failed: %s", self.worker, self.job, one_line(exc))
            log.debug("job lease heartbeat failure", exc_info=True)
            self._expire_locally(now)
            return
        with self._lock:
            self._token = token
            self._valid_until = now + self._ttl if token is not None else None
        if held is None and token is not None:
            log.info("worker %s runs the %s job now (lease %d)", self.worker, self.job, token)
            self._notify(self._on_acquired)
        elif held is not None and token is None:
            log.warning("worker %s lost the %s job to another worker", self.worker, self.job)
            self._notify(self._on_lost)

    def _renew(self, connection: Connection, now: datetime, token: int) -> int | None:
        row = connection.execute(
            update(_JOBS).where(_JOBS.c.name == self.job, _JOBS.c.owner == self.worker, _JOBS.c.token == token)
            .values(expires_at=now + self._ttl).returning(_JOBS.c.token)
        ).first()
        return None if row is None else int(row[0])

    def _claim(self, connection: Connection, now: datetime) -> int | None:
        free = _JOBS.c.owner.is_(None) | _JOBS.c.expires_at.is_(None) | (_JOBS.c.expires_at < now)
        row = connection.execute(
            update(_JOBS).where(_JOBS.c.name == self.job, free)
            .values(owner=self.worker, token=_JOBS.c.token + 1, expires_at=now + self._ttl, acquired_at=now)
            .returning(_JOBS.c.token)
        ).first()
        return None if row is None else int(row[0])

    def _expire_locally(self, now: datetime) -> None:
        """Without renewals, stop holding the job before its lease can expire elsewhere."""
        with self._lock:
            expiring = (self._valid_until is not None
                        and self._valid_until - timedelta(seconds=self._heartbeat) <= now)
            if expiring:
                self._token, self._valid_until = None, None
        if expiring:
            log.warning("worker %s stops running the %s job: its lease could not be renewed", self.worker, self.job)
            self._notify(self._on_lost)

    def _notify(self, callback: Callable[[], None] | None) -> None:
        if callback is None:
            return
        try:
            callback()
        except Exception:  # a callback must not end the heartbeat
            log.exception("the %s job's lease callback failed", self.job)


def job_owner(engine: Engine, job: str) -> tuple[str | None, int, datetime | None] | None:
    """(owner, token, expires_at) of a job's lease, or None when no worker registered it."""
    with engine.connect() as connection:
        row = connection.execute(
            select(_JOBS.c.owner, _JOBS.c.token, _JOBS.c.expires_at).where(_JOBS.c.name == job)
        ).first()
    return None if row is None else (row[0], int(row[1]), row[2])
