"""The drift job's lease on both backends with fake clocks: one worker at a time runs the
detector, another takes over when it dies or stops, and a paused leader cannot write."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from sqlmodel import Session, func, select

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from scaleout_helpers import CAMERAS, FakeClock, T0
from monitor.drift import DriftDetector, NotLeader
from monitor.job_lease import DRIFT_JOB, JobLease, job_owner
from monitor.metrics import Metrics
from monitor.observe_config import DriftConfig
from monitor.store import create_engine_for, session_scope, upsert_increments
from monitor.store.cluster_tables import JobLease as JobLeaseRow
from monitor.store.tables import CameraHour, ConfidenceHour, DriftFlag, LabelHour, utc_hour

TTL, HEARTBEAT = 3.0, 1.0


class Worker:
    """A worker's drift lease and detector; callbacks as `monitor run --worker` wires them."""

    def __init__(self, engine, name: str, clock) -> None:
        self.events: list[str] = []
        self.lease = JobLease(engine, job=DRIFT_JOB, worker=name, ttl=TTL, heartbeat=HEARTBEAT, clock=clock,
                              on_acquired=self._acquired, on_lost=self._lost)
        self.drift = DriftDetector(engine, DriftConfig(interval="1h"), CAMERAS, clock=clock, leader=self.lease)

    def _acquired(self) -> None:
        self.events.append("acquired")
        self.drift.run_soon()

    def _lost(self) -> None:
        self.events.append("lost")
        self.drift.forget()

    def tick(self) -> None:
        self.lease.tick()


def register(engine) -> None:
    """The row start() creates; the tests then drive each heartbeat themselves (no thread)."""
    insert = {"sqlite": sqlite_insert, "postgresql": pg_insert}[engine.dialect.name]
    with engine.begin() as connection:
        connection.execute(insert(JobLeaseRow.__table__).values(name=DRIFT_JOB)
                           .on_conflict_do_nothing(index_elements=["name"]))


def seed_drift(engine) -> None:
    """Forty quiet days, then a day with ten times the alert episodes, at camera gate."""
    camera_rows, label_rows, confidence_rows = [], [], []
    for hour in range(41 * 24):
        at = utc_hour(T0 - timedelta(hours=41 * 24 - hour))
        episodes = 10 if hour >= 40 * 24 else 1
        camera_rows.append({"camera_id": "gate", "hour": at, "frames": 720, "alert_episodes": episodes,
                            "out_of_domain": 0})
        label_rows.append({"camera_id": "gate", "hour": at, "label": "none", "predictions": 720, "positives": 0})
        confidence_rows.append({"camera_id": "gate", "hour": at, "bucket": 9, "predictions": 720})
    with session_scope(engine) as session:
        upsert_increments(CameraHour, camera_rows, keys=("camera_id", "hour"), session=session)
        upsert_increments(LabelHour, label_rows, keys=("camera_id", "hour", "label"), session=session)
        upsert_increments(ConfidenceHour, confidence_rows, keys=("camera_id", "hour", "bucket"), session=session)


def flags(engine) -> int:
    with Session(engine) as session:
        return int(session.exec(select(func.count()).select_from(DriftFlag)).one())


def test_one_worker_holds_the_drift_job_and_another_takes_it_over_when_it_dies(engine, clock):
    register(engine)
    a, b = Worker(engine, "a", clock), Worker(engine, "b", clock)
    a.tick()
    b.tick()
    assert a.lease.holds() and not b.lease.holds() and a.events == ["acquired"] and b.events == []
    assert job_owner(engine, DRIFT_JOB)[:2] == ("a", 1)
    for _ in range(5):  # renewals keep it with a
        clock.advance(HEARTBEAT)
        a.tick()
        b.tick()
    assert a.lease.holds() and not b.lease.holds()

    # a dies (no more heartbeats): b takes over once the lease expired, with a new token.
    clock.advance(HEARTBEAT)
    b.tick()
    assert not b.lease.holds()
    clock.advance(TTL)
    b.tick()
    assert b.lease.holds() and b.events == ["acquired"] and job_owner(engine, DRIFT_JOB)[:2] == ("b", 2)
    # By its own clock, a knows it no longer holds the job, even without reaching the database.
    assert not a.lease.holds()
    # a comes back: its renewal fails and it says so.
    a.tick()
    assert not a.lease.holds() and a.events == ["acquired", "lost"]
    assert b.lease.holds()


def test_a_stopped_holder_hands_the_job_over_at_once(engine, clock):
    register(engine)
    a, b = Worker(engine, "a", clock), Worker(engine, "b", clock)
    a.tick()
    a.lease.stop(release=True)
    assert job_owner(engine, DRIFT_JOB)[0] is None and not a.lease.holds()
    b.tick()  # at its next heartbeat, not after the ttl
    assert b.lease.holds()


def test_workers_claiming_at_the_same_moment_elect_one(backend_url, engine, clock):
    register(engine)
    engines = [create_engine_for(backend_url) for _ in range(4)]
    leases = [JobLease(e, job=DRIFT_JOB, worker=f"w{i}", ttl=TTL, heartbeat=HEARTBEAT, clock=clock)
              for i, e in enumerate(engines)]
    barrier = threading.Barrier(len(leases))

    def claim(lease) -> None:
        barrier.wait()
        lease.tick()

    threads = [threading.Thread(target=claim, args=(lease,)) for lease in leases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    try:
        holders = [lease.worker for lease in leases if lease.holds()]
        assert len(holders) == 1 and job_owner(engine, DRIFT_JOB)[:2] == (holders[0], 1)
    finally:
        for e in engines:
            e.dispose()


def test_only_the_leader_evaluates_and_exports_drift_numbers(engine, clock):
    register(engine)
    seed_drift(engine)
    a, b = Worker(engine, "a", clock), Worker(engine, "b", clock)
    a.tick()
    b.tick()
    for worker in (a, b):
        for scope in worker.drift.scopes():
            worker.drift._job(*scope)  # what the schedule runs every interval
    assert a.drift.numbers().runs == {"ok": len(a.drift.scopes()), "error": 0}
    assert b.drift.numbers().runs == {"ok": 0, "error": 0}
    opened = flags(engine)
    assert opened >= 1  # the tenfold day at gate

    def scrape(worker) -> str:
        metrics = Metrics(CollectorRegistry())
        metrics.watch_drift(worker.drift.numbers)
        return generate_latest(metrics.registry).decode()

    assert "monitor_drift_leader 1.0" in scrape(a) and 'monitor_drift_flag{camera="gate",kind="rate_up"' in scrape(a)
    assert "monitor_drift_leader 0.0" in scrape(b) and "monitor_drift_flag{" not in scrape(b)

    # a dies; b takes over and evaluates; a's numbers vanish from its /metrics once it knows.
    clock.advance(TTL + HEARTBEAT)
    b.tick()
    for scope in b.drift.scopes():
        b.drift._job(*scope)
    assert b.drift.numbers().runs["ok"] == len(b.drift.scopes())
    assert 'monitor_drift_flag{camera="gate",kind="rate_up"' in scrape(b)
    assert flags(engine) == opened  # the same flags, seen again, not opened twice
    a.tick()
    assert a.events[-1] == "lost" and "monitor_drift_flag{" not in scrape(a)


def test_a_worker_that_becomes_the_leader_evaluates_at_once_not_after_the_interval(engine, clock):
    register(engine)
    a, b = Worker(engine, "a", clock), Worker(engine, "b", clock)  # the detector runs every hour
    a.tick()
    b.drift.start()  # its first runs are now, and skipped: a leads
    try:
        time.sleep(1.5)
        assert b.drift.numbers().runs == {"ok": 0, "error": 0}
        clock.advance(TTL + HEARTBEAT)
        b.tick()  # a is gone: b takes over and runs every scope now
        deadline = time.monotonic() + 20
        while b.drift.numbers().runs["ok"] < len(b.drift.scopes()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert b.drift.numbers().runs == {"ok": len(b.drift.scopes()), "error": 0}
    finally:
        b.drift.stop()


def test_a_paused_leader_cannot_write_over_its_successor(engine):
    """a's clock stopped (a paused process): it still believes it holds the job, but the
    database says b does, so a's evaluation writes nothing."""
    register(engine)
    seed_drift(engine)
    a_clock, b_clock = FakeClock(), FakeClock()
    a, b = Worker(engine, "a", a_clock), Worker(engine, "b", b_clock)
    a.tick()
    b_clock.advance(TTL + HEARTBEAT)
    b.tick()
    assert a.lease.holds() and b.lease.holds()  # both believe it, by their own clocks
    with pytest.raises(NotLeader):
        a.drift.evaluate("north", "gate")
    assert flags(engine) == 0
    b.drift.evaluate("north", "gate")
    assert flags(engine) >= 1


def test_on_postgresql_the_job_cannot_change_hands_while_the_leader_writes(postgres_url, clock):
    from monitor.store import init_schema

    engine = create_engine_for(postgres_url)
    other = create_engine_for(postgres_url)
    try:
        init_schema(engine)
        register(engine)
        a = JobLease(engine, job=DRIFT_JOB, worker="a", ttl=TTL, heartbeat=HEARTBEAT, clock=clock)
        b = JobLease(other, job=DRIFT_JOB, worker="b", ttl=TTL, heartbeat=HEARTBEAT,
                     clock=lambda: clock.now + timedelta(hours=1))  # b sees a's lease long expired
        a.tick()
        with Session(engine) as session:
            assert a.confirm(session)  # a's evaluation has begun: the row is share-locked
            claim = threading.Thread(target=b.tick)
            claim.start()
            time.sleep(1.0)
            assert claim.is_alive() and not b.holds()  # b's claim waits for a's transaction
            session.commit()
        claim.join(10)
        assert not claim.is_alive() and b.holds()
    finally:
        engine.dispose()
        other.dispose()
