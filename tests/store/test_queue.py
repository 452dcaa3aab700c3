"""The review queue and hourly counts, on a real SQLite file and a real PostgreSQL."""

from __future__ import annotations

import errno
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import event, select, text
from sqlmodel import Session

from monitor.config import MonitorConfig
from monitor.store import (
    Camera,
    CameraHour,
    LabelHour,
    ReviewItem,
    ReviewItemPublic,
    ReviewStatus,
    Site,
    SnapshotStore,
    StoreError,
    add_frame_counts,
    count_items,
    get_item,
    list_items,
    record_predictions,
    sync_sites_and_cameras,
)
from monitor.store import snapshots as snapshots_module
from monitor.types import QueueReason

T0 = datetime(2026, 7, 1, 12, 0, tzinfo=timezone.utc)
CAMERA_SITE = {"cam-a": "north", "cam-b": "north", "cam-c": "south"}


def label_hours(engine) -> dict[tuple[str, datetime, str], tuple[int, int]]:
    with Session(engine) as session:
        return {
            (r.camera_id, r.hour, r.label): (r.predictions, r.positives)
            for r in session.exec(select(LabelHour)).scalars()
        }


def camera_hours(engine) -> dict[tuple[str, datetime], tuple[int, int, int]]:
    with Session(engine) as session:
        return {
            (r.camera_id, r.hour): (r.frames, r.failed, r.dropped) for r in session.exec(select(CameraHour)).scalars()
        }


# ---------------------------------------------------------------- sites and cameras


def test_sync_stores_sites_and_cameras_with_redacted_urls_only(
    synced: Session, engine, camera_secrets: tuple[str, str], config: MonitorConfig
) -> None:
    with Session(engine) as session:
        sites = {s.id: s.name for s in session.exec(select(Site)).scalars()}
        cameras = {c.id: c for c in session.exec(select(Camera)).scalars()}
        raw = [tuple(row) for row in session.execute(text("SELECT * FROM cameras"))]
    assert sites == {"north": "North campground", "south": "south"}
    assert cameras["cam-a"].url_display == "rtsp://***@10.0.0.5:554/live?token=***"
    assert cameras["cam-a"].site_id == "north" and cameras["cam-a"].enabled is True
    assert cameras["cam-b"].name == "Trailhead"
    assert cameras["cam-b"].url_display == config.sites[0].cameras[1].path
    assert cameras["cam-c"].url_display == "rtsp://10.0.0.9/stream"
    for secret in camera_secrets:
        assert secret not in repr(raw)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_no_camera_secret_reaches_the_sqlite_files(synced: Session, engine, camera_secrets: tuple[str, str]) -> None:
    db_file = Path(engine.url.database)
    stored = b"".join(p.read_bytes() for p in db_file.parent.glob(db_file.name + "*"))
    assert b"10.0.0.5" in stored, "the camera row is really in these files"
    for secret in camera_secrets:
        assert secret.encode() not in stored


def test_resync_updates_cameras_and_disables_those_gone_from_the_config(synced: Session, engine) -> None:
    changed = MonitorConfig(
        sites=[
            {
                "id": "north",
                "name": "North",
                "cameras": [{"id": "cam-a", "name": "Gate", "url": "rtsp://10.0.0.6/x", "enabled": False}],
            },
            {"id": "south", "cameras": [{"id": "cam-b", "url": "rtsp://10.0.0.7/moved"}]},
        ]
    )
    sync_sites_and_cameras(changed, session=synced)
    with Session(engine) as session:
        cameras = {c.id: (c.site_id, c.name, c.url_display, c.enabled) for c in session.exec(select(Camera)).scalars()}
        sites = {s.id: s.name for s in session.exec(select(Site)).scalars()}
    assert cameras == {
        "cam-a": ("north", "Gate", "rtsp://10.0.0.6/x", False),
        "cam-b": ("south", "cam-b", "rtsp://10.0.0.7/moved", True),
        "cam-c": ("south", "cam-c", "rtsp://10.0.0.9/stream", False),  # kept, disabled
    }
    assert sites == {"north": "North", "south": "south"}


# ---------------------------------------------------------------- recording predictions


def test_review_item_round_trip_keeps_every_field(
    synced: Session, engine, snapshots: SnapshotStore, make_outcome
) -> None:
    captured = datetime(2026, 7, 1, 14, 5, 9, 250000, tzinfo=timezone(timedelta(hours=2)))
    outcome = make_outcome(
        site_id="north",
        camera_id="cam-b",
        captured_at=captured,
        label="black",
        confidence=0.625,
        reason=QueueReason.OUT_OF_DOMAIN,
        positive=True,
        media_ts=12.5,
        size=(36, 52),
    )
    before = datetime.now(timezone.utc)
    ids = record_predictions([outcome], session=synced, snapshots=snapshots)
    assert len(ids) == 1

    with Session(engine) as session:  # a fresh session: values come from the database
        item = get_item(ids[0], session=session)
    assert item is not None
    assert (item.site_id, item.camera_id, item.label, item.model_id) == ("north", "cam-b", "black", "test-model@1")
    assert item.confidence == pytest.approx(0.625)
    assert item.probabilities == pytest.approx(outcome.prediction.probabilities)
    assert item.media_ts == pytest.approx(12.5)
    assert item.reason == "out_of_domain" and item.reason == QueueReason.OUT_OF_DOMAIN
    assert item.status == "pending"
    assert item.captured_at == captured
    assert item.captured_at.tzinfo is not None and item.captured_at.utcoffset() == timedelta(0)
    assert item.captured_at.hour == 12
    assert before - timedelta(seconds=1) <= item.created_at <= datetime.now(timezone.utc) + timedelta(seconds=1)
    assert item.review_label is None and item.reviewed_at is None
    assert item.snapshot.startswith("north/cam-b/2026-07-01/120509-")
    with Image.open(snapshots.resolve(item.snapshot)) as image:
        assert image.size == (52, 36)

    public = ReviewItemPublic.model_validate(item).model_dump(mode="json")
    assert "snapshot" not in public
    assert public["reason"] == "out_of_domain" and public["status"] == "pending"
    assert public["captured_at"] in ("2026-07-01T12:05:09.250000Z", "2026-07-01T12:05:09.250000+00:00")


def test_only_queued_predictions_become_items_but_all_are_counted(
    synced: Session, engine, snapshots: SnapshotStore, make_outcome, files_under
) -> None:
    hour = T0 + timedelta(minutes=30)
    outcomes = [
        make_outcome(captured_at=hour, label="grizzly", positive=True, reason=None),  # alert only
        make_outcome(captured_at=hour, label="none", confidence=0.97, positive=False, reason=None),
        make_outcome(
            captured_at=hour, label="none", confidence=0.95, positive=False, reason=QueueReason.NEGATIVE_SAMPLE
        ),
        make_outcome(captured_at=hour, label="grizzly", positive=True, reason=QueueReason.POSITIVE),
    ]
    ids = record_predictions(outcomes, session=synced, snapshots=snapshots)
    assert len(ids) == 2 and ids[0] < ids[1]
    with Session(engine) as session:
        assert [i.reason for i in list_items(session=session)] == ["positive", "negative_sample"]
    assert len(files_under(snapshots.root)) == 2
    assert label_hours(engine) == {("cam-a", T0, "grizzly"): (2, 2), ("cam-a", T0, "none"): (2, 0)}


def test_hourly_label_counts_add_up_over_calls_and_hours(synced: Session, engine, snapshots, make_outcome) -> None:
    in_hour = [T0 + timedelta(minutes=m) for m in (0, 20, 59)]
    next_hour = T0 + timedelta(hours=1, seconds=1)
    # +05:30: 17:45 local is 12:15 UTC, so it belongs to the 12:00 UTC hour
    odd_zone = datetime(2026, 7, 1, 17, 45, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    first = [make_outcome(captured_at=t, label="black", reason=None, positive=True) for t in in_hour]
    second = [
        make_outcome(captured_at=odd_zone, label="black", reason=None, positive=False),
        make_outcome(captured_at=next_hour, label="black", reason=None, positive=True),
        make_outcome(camera_id="cam-c", site_id="south", captured_at=T0, label="teddy", reason=None, positive=False),
    ]
    record_predictions(first, session=synced, snapshots=snapshots)  # three of one key in one statement
    record_predictions(second, session=synced, snapshots=snapshots)
    record_predictions(first, session=synced, snapshots=snapshots)
    assert label_hours(engine) == {
        ("cam-a", T0, "black"): (7, 6),
        ("cam-a", T0 + timedelta(hours=1), "black"): (1, 1),
        ("cam-c", T0, "teddy"): (1, 0),
    }
    assert camera_hours(engine) == {  # every record is one classified frame
        ("cam-a", T0): (7, 0, 0),
        ("cam-a", T0 + timedelta(hours=1)): (1, 0, 0),
        ("cam-c", T0): (1, 0, 0),
    }
    for hour in (key[1] for key in label_hours(engine)):
        assert hour.utcoffset() == timedelta(0)


def test_frame_counts_add_up_when_called_twice_for_the_same_hour(synced: Session, engine) -> None:
    add_frame_counts("cam-a", T0 + timedelta(minutes=10), frames=3, failed=1, session=synced)
    add_frame_counts("cam-a", T0 + timedelta(minutes=50), frames=2, dropped=4, session=synced)
    add_frame_counts("cam-a", T0 + timedelta(hours=1), frames=1, session=synced)
    add_frame_counts("cam-b", T0, failed=2, session=synced)
    add_frame_counts("cam-b", T0, session=synced)  # nothing to add: no row, no error
    assert camera_hours(engine) == {
        ("cam-a", T0): (5, 1, 4),
        ("cam-a", T0 + timedelta(hours=1)): (1, 0, 0),
        ("cam-b", T0): (0, 2, 0),
    }


@pytest.mark.parametrize(
    "camera_id, hour, counts, error",
    [
        ("cam-a", T0, {"frames": -1}, ValueError),
        ("cam-a", datetime(2026, 7, 1, 12, 0), {"frames": 1}, ValueError),
        ("no-such-camera", T0, {"frames": 1}, StoreError),
    ],
)
def test_add_frame_counts_refuses_bad_input(synced: Session, engine, camera_id, hour, counts, error) -> None:
    with pytest.raises(error):
        add_frame_counts(camera_id, hour, session=synced, **counts)
    assert camera_hours(engine) == {}
    add_frame_counts("cam-a", T0, frames=1, session=synced)  # the session is still usable
    assert camera_hours(engine) == {("cam-a", T0): (1, 0, 0)}


def test_concurrent_writers_all_succeed(synced: Session, engine, snapshots: SnapshotStore, make_outcome) -> None:
    """The pipeline thread and the sampler's drop counter write at the same time."""
    threads, batches, per_batch = 4, 8, 4
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            with Session(engine) as session:
                for b in range(batches):
                    outcomes = [
                        make_outcome(label="polar", captured_at=T0, seed=n * 100 + b * 10 + i, size=(8, 8))
                        for i in range(per_batch)
                    ]
                    record_predictions(outcomes, session=session, snapshots=snapshots)
                    add_frame_counts("cam-a", T0, dropped=1, session=session)
        except BaseException as exc:  # surfaced below; a thread's exception is otherwise lost
            errors.append(exc)

    workers = [threading.Thread(target=writer, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert errors == []
    total = threads * batches * per_batch
    with Session(engine) as session:
        assert count_items(session=session) == total
    assert label_hours(engine) == {("cam-a", T0, "polar"): (total, total)}
    assert camera_hours(engine) == {("cam-a", T0): (total, 0, threads * batches)}


# ---------------------------------------------------------------- failures leave nothing behind


def _assert_nothing_stored(engine, snapshots: SnapshotStore, files_under) -> None:
    assert files_under(snapshots.root) == [], "no snapshot files without rows"
    with Session(engine) as session:
        assert count_items(session=session) == 0
    assert label_hours(engine) == {}, "the counts were rolled back with the rows"


def test_insert_failure_deletes_the_snapshots_already_written(
    synced: Session, engine, snapshots: SnapshotStore, make_outcome, files_under
) -> None:
    batch = [
        make_outcome(camera_id="cam-a", seed=1),
        make_outcome(camera_id="cam-b", seed=2),
        make_outcome(camera_id="ghost", seed=3),  # not a configured camera: foreign key fails
    ]
    with pytest.raises(StoreError) as caught:
        record_predictions(batch, session=synced, snapshots=snapshots)
    assert "\n" not in str(caught.value)
    _assert_nothing_stored(engine, snapshots, files_under)

    ids = record_predictions(batch[:2], session=synced, snapshots=snapshots)  # the session recovered
    assert len(ids) == 2 and len(files_under(snapshots.root)) == 2


def test_failure_at_commit_deletes_the_snapshots_already_written(
    synced: Session, engine, snapshots: SnapshotStore, make_outcome, files_under, request
) -> None:
    if engine.dialect.name == "sqlite":
        # Deferred foreign keys are checked by COMMIT itself, so the commit (not an
        # insert) fails; the pragma lasts until the end of the next transaction.
        synced.connection().exec_driver_sql("PRAGMA defer_foreign_keys=ON")
        batch = [make_outcome(seed=1), make_outcome(camera_id="ghost", seed=2)]
    else:
        admin = request.getfixturevalue("postgres_admin")

        def kill_connection(session: Session) -> None:
            pid = session.connection().exec_driver_sql("SELECT pg_backend_pid()").scalar()
            with admin.begin() as connection:
                connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})

        # Runs inside commit(), after the rows were sent: the server goes away before COMMIT.
        event.listen(synced, "before_commit", kill_connection, once=True)
        batch = [make_outcome(seed=1), make_outcome(camera_id="cam-b", seed=2)]
    with pytest.raises(StoreError) as caught:
        record_predictions(batch, session=synced, snapshots=snapshots)
    assert "\n" not in str(caught.value)
    _assert_nothing_stored(engine, snapshots, files_under)


def test_snapshot_failure_mid_batch_deletes_the_earlier_snapshots(
    synced: Session, engine, snapshots: SnapshotStore, make_outcome, files_under, monkeypatch
) -> None:
    real_write = snapshots_module._write_durably
    lock = threading.Lock()
    calls, written = [], []

    def one_write_fills_the_disk(path, data):
        with lock:
            calls.append(path)
            fails = len(calls) == 3
        if fails:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, data)
        written.append(path)

    monkeypatch.setattr(snapshots_module, "_write_durably", one_write_fills_the_disk)
    batch = [make_outcome(seed=i) for i in range(5)]
    with pytest.raises(StoreError, match="disk full"):
        record_predictions(batch, session=synced, snapshots=snapshots)
    assert len(written) == 4, "the other four files were really written before the batch failed"
    _assert_nothing_stored(engine, snapshots, files_under)


# ---------------------------------------------------------------- listing


@pytest.fixture
def many_items(synced: Session) -> dict[int, dict]:
    """300 items over three cameras, four labels and three statuses; id -> attributes.

    Inserted directly (no JPEGs): these tests are about the queries, and the write path
    has its own tests above.
    """
    cameras = ["cam-a", "cam-b", "cam-c"]
    labels = ["grizzly", "black", "none", "polar"]
    statuses = ["pending", "approved", "rejected"]
    plan = [
        {
            "camera_id": cameras[i % 3],
            "site_id": CAMERA_SITE[cameras[i % 3]],
            "label": labels[i % 4],
            "status": statuses[(i // 7) % 3 if i % 5 else 0],
        }
        for i in range(300)
    ]
    rows = [
        ReviewItem(
            captured_at=T0 + timedelta(seconds=i),
            confidence=0.9,
            probabilities={p["label"]: 1.0},
            model_id="m",
            reason="positive",
            snapshot=f"x/{i}.jpg",
            **p,
        )
        for i, p in enumerate(plan)
    ]
    synced.add_all(rows)
    synced.commit()
    return {row.id: p for row, p in zip(rows, plan, strict=True)}


def _walk_pages(session: Session, page: int, **filters) -> list[int]:
    seen: list[int] = []
    before = None
    while True:
        items = list_items(session=session, limit=page, before_id=before, **filters)
        assert len(items) <= page
        seen.extend(item.id for item in items)
        if len(items) < page:
            return seen
        before = items[-1].id


@pytest.mark.parametrize(
    "filters",
    [
        {},
        {"status": "pending"},
        {"status": ReviewStatus.APPROVED},
        {"camera_id": "cam-b"},
        {"site_id": "north", "label": "black"},
        {"status": "rejected", "site_id": "south", "label": "none"},
    ],
    ids=["all", "pending", "approved", "camera", "site+label", "status+site+label"],
)
def test_keyset_paging_returns_every_matching_item_once_newest_first(
    engine, many_items: dict[int, dict], filters: dict
) -> None:
    wanted = {key: getattr(value, "value", value) for key, value in filters.items()}
    expected = sorted(
        (i for i, attrs in many_items.items() if all(attrs[k] == v for k, v in wanted.items())), reverse=True
    )
    assert expected, "the filter must match something to prove anything"
    with Session(engine) as session:
        assert _walk_pages(session, 37, **filters) == expected
        assert _walk_pages(session, 1000, **filters) == expected
        assert count_items(session=session, **filters) == len(expected)
        assert list_items(session=session, before_id=min(expected), **filters) == []


def test_count_items_by_status(engine, many_items: dict[int, dict]) -> None:
    with Session(engine) as session:
        for status in ReviewStatus:
            expected = sum(1 for a in many_items.values() if a["status"] == status.value)
            assert count_items(session=session, status=status.value) == expected
        assert count_items(session=session) == 300


@pytest.mark.parametrize("kwargs", [{"status": "done"}, {"limit": 0}, {"limit": 1001}])
def test_list_items_refuses_bad_arguments(session: Session, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        list_items(session=session, **kwargs)


def test_get_item_of_a_missing_id_is_none(session: Session) -> None:
    assert get_item(12345, session=session) is None


def _captured_sql(engine, run) -> tuple[str, object]:
    statements: list[tuple[str, object]] = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        run()
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    [(statement, parameters)] = [s for s in statements if "review_items" in s[0]]
    return statement, parameters


@pytest.mark.parametrize("filters", [{"status": "pending"}, {"site_id": "north"}, {"camera_id": "cam-a"}])
def test_deep_pages_use_an_index_in_id_order_not_a_sort(engine, many_items: dict[int, dict], filters: dict) -> None:
    """The query the code really sends walks an index backwards: no scan-and-sort per page."""
    middle = sorted(many_items)[150]
    with Session(engine) as session:
        statement, parameters = _captured_sql(
            engine, lambda: list_items(session=session, before_id=middle, limit=50, **filters)
        )
        if engine.dialect.name == "sqlite":
            plan = " | ".join(
                row[-1] for row in session.connection().exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)
            )
            assert "USING INDEX ix_review_items_" in plan or "USING COVERING INDEX ix_review_items_" in plan, plan
            assert "TEMP B-TREE" not in plan, plan
        else:
            # 300 rows are too few for the planner to bother; forbid the fallbacks instead,
            # so the test fails if no suitable index exists.
            session.execute(text("SET LOCAL enable_seqscan = off"))
            session.execute(text("SET LOCAL enable_sort = off"))
            rows = session.connection().exec_driver_sql("EXPLAIN " + statement, parameters).all()
            plan = " | ".join(row[0] for row in rows)
            assert "Index Scan Backward using ix_review_items_" in plan, plan
            assert "Sort" not in plan, plan
