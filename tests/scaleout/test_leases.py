"""Camera leases on both backends with a fake clock: fair shares, expiry, takeover, fencing, once per still."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, func, select

from scaleout_helpers import CAMERAS, T0
from monitor.leases import LeaseManager, fair_share, lease_table
from monitor.store.cluster_tables import Alert, CameraLease, OutboxEntry, SampleRow
from monitor.store.recording import Recorder
from monitor.store.tables import CameraHour, ReviewItem

ALL_CAMERAS = [camera for cameras in CAMERAS.values() for camera in cameras]
TTL, HEARTBEAT = 3.0, 1.0


class Worker:
    """A lease manager whose callbacks record which cameras it samples."""

    def __init__(self, engine, name: str, clock, cameras=ALL_CAMERAS) -> None:
        self.sampling: set[str] = set()
        self.manager = LeaseManager(
            engine, worker=name, cameras=cameras, ttl=TTL, heartbeat=HEARTBEAT,
            on_acquired=self.sampling.add, on_released=self.sampling.discard, clock=clock,
        )

    def tick(self) -> None:
        self.manager.tick()


def register(engine, workers) -> None:
    """The lease rows start() creates; the tests then drive each heartbeat themselves (no thread)."""
    insert = {"sqlite": sqlite_insert, "postgresql": pg_insert}[engine.dialect.name]
    with engine.begin() as connection:
        connection.execute(insert(CameraLease.__table__).values([{"camera_id": c} for c in ALL_CAMERAS])
                           .on_conflict_do_nothing(index_elements=["camera_id"]))


def owners(engine) -> dict[str, str | None]:
    return {camera: owner for camera, owner, _token, _expires in lease_table(engine)}


@pytest.mark.parametrize(("cameras", "workers", "share"), [(12, 3, 4), (4, 3, 2), (4, 1, 4), (5, 0, 5)])
def test_fair_share(cameras, workers, share):
    assert fair_share(cameras, workers) == share


def test_workers_split_the_cameras_and_each_camera_has_one_worker(engine, clock):
    a, b = Worker(engine, "a", clock), Worker(engine, "b", clock)
    register(engine, [a, b])
    a.tick()
    assert a.sampling == set(ALL_CAMERAS)  # alone: takes everything
    b.tick()  # b registers; a's share drops to 2 on its next heartbeat
    clock.advance(HEARTBEAT)
    a.tick()
    assert len(a.sampling) == 2  # hands two over (draining: stills already taken are still recorded)
    assert set(a.manager.held()) == set(ALL_CAMERAS)
    clock.advance(HEARTBEAT)
    a.tick()  # ... and releases them one heartbeat later
    b.tick()
    assert len(b.sampling) == 2 and a.sampling.isdisjoint(b.sampling)
    assert a.sampling | b.sampling == set(ALL_CAMERAS)
    assert {camera: owner for camera, owner in owners(engine).items()} == (
        {c: "a" for c in a.sampling} | {c: "b" for c in b.sampling})


def test_a_dead_workers_cameras_are_taken_over_after_the_ttl_with_a_new_token(engine, clock):
    a, b = Worker(engine, "a", clock), Worker(engine, "b", clock)
    register(engine, [a, b])
    a.tick(); b.tick(); clock.advance(HEARTBEAT); a.tick(); b.tick(); clock.advance(HEARTBEAT); a.tick(); b.tick()
    assert len(a.sampling) == len(b.sampling) == 2
    a_cameras, old_tokens = set(a.sampling), a.manager.held()
    # a dies (stops renewing). Before the ttl, b must not take anything.
    clock.advance(TTL - HEARTBEAT)
    b.tick()
    assert b.sampling.isdisjoint(a_cameras)
    clock.advance(HEARTBEAT + 0.001)  # past a's last renewal + ttl
    b.tick()
    assert b.sampling == set(ALL_CAMERAS)
    tokens = b.manager.held()
    assert all(tokens[camera] > old_tokens[camera] for camera in a_cameras)
    # a comes back (it was only paused): its next heartbeat finds the cameras gone.
    a.tick()
    assert a.sampling == set()


def test_a_graceful_stop_hands_the_cameras_over_at_once(engine, clock):
    a, b = Worker(engine, "a", clock), Worker(engine, "b", clock)
    register(engine, [a, b])
    a.tick(); b.tick()
    a.manager.stop(release=True)
    assert set(owners(engine).values()) <= {None, "b"}
    b.tick()  # a's worker row is gone too: b's share is every camera, no ttl to wait
    assert b.sampling == set(ALL_CAMERAS)


def test_recording_is_fenced_by_the_lease_token(engine, clock, snapshots, make_routed):
    a, b = Worker(engine, "a", clock), Worker(engine, "b", clock)
    register(engine, [a, b])
    a.tick()
    stale = Recorder(engine, snapshots, worker="a", clock=clock)
    stale.fence = a.manager.held
    a_view = dict(a.manager.held())
    clock.advance(TTL + 0.1)
    b.tick()  # b takes every camera over while a is paused
    assert b.sampling == set(ALL_CAMERAS)
    stale.fence = lambda: a_view  # a still believes it holds them
    assert stale([make_routed("gate", T0 + timedelta(seconds=10))]) == []
    assert stale.fenced == 1
    fresh = Recorder(engine, snapshots, worker="b", clock=clock)
    fresh.fence = b.manager.held
    assert len(fresh([make_routed("gate", T0 + timedelta(seconds=11))])) == 1
    with Session(engine) as session:
        assert session.exec(select(SampleRow.worker)).all() == ["b"]
        assert session.exec(select(func.count()).select_from(ReviewItem)).one() == 1
        assert session.exec(select(func.count()).select_from(Alert)).one() == 1


def test_a_still_is_recorded_once_even_when_stored_twice(engine, snapshots, make_routed, files_in):
    recorder = Recorder(engine, snapshots, targets_by_site={"north": ["ops"]}, worker="w")
    batch = [make_routed("gate", T0 + timedelta(seconds=i), seed=i) for i in range(4)]
    assert len(recorder(batch)) == 4
    # A retry of a batch whose commit was acknowledged too late, plus one new still.
    again = recorder([*batch, make_routed("gate", T0 + timedelta(seconds=9), seed=9)])
    assert len(again) == 1 and recorder.duplicates == 4
    with Session(engine) as session:
        assert session.exec(select(func.count()).select_from(SampleRow)).one() == 5
        assert session.exec(select(func.count()).select_from(ReviewItem)).one() == 5
        assert session.exec(select(func.sum(CameraHour.frames))).one() == 5
        assert session.exec(select(func.count()).select_from(Alert)).one() == 5
        assert session.exec(select(func.count()).select_from(OutboxEntry)).one() == 5
    assert len(files_in(snapshots.root)) == 5  # the duplicates' snapshots were removed again


def test_concurrent_claims_never_give_a_camera_to_two_workers(engine, clock):
    workers = [Worker(engine, f"w{i}", clock) for i in range(4)]
    register(engine, workers)
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(workers))

    def beat(worker: Worker) -> None:
        try:
            for _ in range(5):
                barrier.wait()
                worker.tick()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=beat, args=(worker,)) for worker in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    held = [set(worker.manager.held()) for worker in workers]
    for i, mine in enumerate(held):
        for other in held[i + 1:]:
            assert mine.isdisjoint(other)
    assert set().union(*held) == set(ALL_CAMERAS)
    database = owners(engine)
    for worker, mine in zip(workers, held):
        assert all(database[camera] == worker.manager.worker for camera in mine)


def test_a_burst_of_photos_in_one_second_are_different_stills(engine, snapshots, make_routed):
    recorder = Recorder(engine, snapshots, targets_by_site={"north": ["ops"]})
    burst = [make_routed("trail", T0, seed=i) for i in range(3)]
    burst = [type(o)(o.site_id, type(o.frame)(o.frame.camera_id, o.frame.image, o.frame.captured_at,
                                               origin=f"DCIM/IMG_{i:04d}.JPG"), o.prediction, o.route)
             for i, o in enumerate(burst)]
    assert len(recorder(burst)) == 3 and recorder.duplicates == 0
    assert recorder(burst[:1]) == [] and recorder.duplicates == 1  # the same file again is a repeat
    with Session(engine) as session:
        keys = session.exec(select(Alert.key)).all()
    assert len(set(keys)) == 3
