"""Engines, schema and sessions on a real SQLite file and a real PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy import inspect, text
from sqlmodel import Session

from monitor.store import (
    Camera,
    ReviewItem,
    Site,
    StoreError,
    create_engine_for,
    get_item,
    init_schema,
    session_scope,
)


def test_sqlite_every_connection_gets_wal_and_pragmas(tmp_path: Path) -> None:
    db_file = tmp_path / "nested" / "folder" / "monitor.db"
    engine = create_engine_for(f"sqlite:///{db_file}")
    try:
        assert db_file.parent.is_dir(), "the database folder is created"
        # Two connections at once: the pool must hand out two different DBAPI
        # connections, and each must be configured, not only the first.
        with engine.connect() as first, engine.connect() as second:
            assert first.connection.dbapi_connection is not second.connection.dbapi_connection
            for connection in (first, second):
                assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
                assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
                assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
                assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
        init_schema(engine)
        with Session(engine) as session:
            session.add(Site(id="s", name="S"))
            session.commit()
        assert Path(f"{db_file}-wal").exists(), "a write in WAL mode goes to the -wal file"
    finally:
        engine.dispose()


def test_sqlite_foreign_keys_are_enforced(tmp_path: Path) -> None:
    engine = create_engine_for(f"sqlite:///{tmp_path / 'monitor.db'}")
    init_schema(engine)
    try:
        with Session(engine) as session:
            session.add(Camera(id="orphan", site_id="no-such-site", name="x", url_display="x"))
            with pytest.raises(sqlalchemy.exc.IntegrityError):
                session.commit()
    finally:
        engine.dispose()


def test_init_schema_creates_tables_and_indexes_and_is_idempotent(engine) -> None:
    init_schema(engine)  # second time: must not fail or duplicate anything
    inspector = inspect(engine)
    assert {"sites", "cameras", "review_items", "camera_hours", "label_hours"} <= set(inspector.get_table_names())
    indexes = {ix["name"]: ix["column_names"] for ix in inspector.get_indexes("review_items")}
    assert indexes["ix_review_items_status_id"] == ["status", "id"]
    assert indexes["ix_review_items_camera_captured"] == ["camera_id", "captured_at"]
    assert indexes["ix_review_items_site_id_id"] == ["site_id", "id"]
    assert inspector.get_pk_constraint("camera_hours")["constrained_columns"] == ["camera_id", "hour"]
    assert inspector.get_pk_constraint("label_hours")["constrained_columns"] == ["camera_id", "hour", "label"]


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_postgres_schema_is_isolated_per_test(engine) -> None:
    """The fixture's search_path really points at a fresh schema (so tests cannot leak)."""
    with engine.connect() as connection:
        schema = connection.exec_driver_sql("SELECT current_schema()").scalar()
        tables = connection.execute(
            text(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = :s AND table_name = 'review_items'"
            ),
            {"s": schema},
        ).scalar()
    assert schema.startswith("test_")
    assert tables == 1


def test_session_scope_commits_on_success_and_rolls_back_on_error(engine) -> None:
    with session_scope(engine) as session:
        session.add(Site(id="kept", name="Kept"))
    with pytest.raises(RuntimeError, match="boom"):
        with session_scope(engine) as session:
            session.add(Site(id="dropped", name="Dropped"))
            session.flush()
            raise RuntimeError("boom")
    with session_scope(engine) as session:
        ids = {site.id for site in session.exec(sqlalchemy.select(Site)).scalars()}
    assert ids == {"kept"}


def test_session_scope_objects_stay_readable_after_the_block(engine) -> None:
    with session_scope(engine) as session:
        session.add(Site(id="s1", name="One"))
    with session_scope(engine) as session:
        site = session.get(Site, "s1")
    assert site is not None and site.name == "One"  # no DetachedInstanceError


def test_datetimes_are_stored_as_utc_and_read_back_aware(engine) -> None:
    local = timezone(timedelta(hours=-7))
    captured = datetime(2026, 3, 1, 23, 30, 15, 123456, tzinfo=local)  # 06:30:15 UTC next day
    with session_scope(engine) as session:
        session.add(Site(id="s", name="S"))
        session.flush()  # no relationship() between them, so the ORM does not order them
        session.add(Camera(id="c", site_id="s", name="C", url_display="x"))
        session.flush()
        item = ReviewItem(
            site_id="s",
            camera_id="c",
            captured_at=captured,
            label="black",
            confidence=0.8,
            probabilities={"black": 0.8, "none": 0.2},
            model_id="m",
            reason="positive",
            snapshot="a.jpg",
        )
        session.add(item)
        session.flush()
        item_id = item.id
    with Session(engine) as session:
        loaded = get_item(item_id, session=session)
        raw = session.execute(text("SELECT captured_at FROM review_items")).scalar()
    assert loaded.captured_at == captured
    assert loaded.captured_at.utcoffset() == timedelta(0)
    assert loaded.captured_at.hour == 6 and loaded.captured_at.day == 2
    if isinstance(raw, datetime):  # PostgreSQL timestamptz: the same instant
        assert raw == captured
    else:  # SQLite text: UTC wall time, not the -07:00 one
        assert raw.startswith("2026-03-02 06:30:15.123456"), raw


def test_naive_datetimes_are_refused(engine) -> None:
    with Session(engine) as session:
        session.add(Site(id="s", name="S"))
        session.flush()  # no relationship() between them, so the ORM does not order them
        session.add(Camera(id="c", site_id="s", name="C", url_display="x"))
        session.flush()
        session.add(
            ReviewItem(
                site_id="s",
                camera_id="c",
                captured_at=datetime(2026, 1, 1, 12, 0),
                label="black",
                confidence=0.8,
                probabilities={},
                model_id="m",
                reason="positive",
                snapshot="a.jpg",
            )
        )
        with pytest.raises(sqlalchemy.exc.StatementError, match="timezone-aware"):
            session.flush()


@pytest.mark.parametrize(
    "url, expected",
    [
        ("postgresql+psycopg://watcher:hunter2@127.0.0.1:1/test", "cannot connect"),
        ("postgresql://watcher:hunter2@127.0.0.1:1/test", "cannot connect"),
        ("mysql://watcher:hunter2@127.0.0.1/test", "not supported"),
        ("not a url at all hunter2", "not a valid URL"),
    ],
)
def test_bad_database_urls_raise_one_line_store_error_without_password(url: str, expected: str) -> None:
    with pytest.raises(StoreError) as caught:
        create_engine_for(url)
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message
    assert "hunter2" not in message
    if "127.0.0.1" in url:
        assert "127.0.0.1" in message  # says which server it could not reach


def test_unreachable_postgres_fails_fast_enough() -> None:
    start = datetime.now(timezone.utc)
    with pytest.raises(StoreError):
        create_engine_for("postgresql+psycopg://postgres:hunter2@127.0.0.1:1/test")
    assert datetime.now(timezone.utc) - start < timedelta(seconds=15)


def test_sqlite_folder_that_cannot_be_created_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(StoreError, match="cannot create the folder") as caught:
        create_engine_for(f"sqlite:///{blocker / 'sub' / 'monitor.db'}")
    assert "\n" not in str(caught.value)


def test_a_table_missing_inside_session_scope_is_a_store_error_on_both_backends(engine) -> None:
    """SQLite says OperationalError, PostgreSQL ProgrammingError: both are the database's state."""
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE label_hours")
    with pytest.raises(StoreError, match="label_hours") as caught:
        with session_scope(engine) as session:
            session.execute(text("SELECT count(*) FROM label_hours"))
    assert "\n" not in str(caught.value)
    if engine.dialect.name == "postgresql":  # SQLite calls this an OperationalError too
        # A mistake in a statement is not the database's fault: it passes through as it is.
        with pytest.raises(sqlalchemy.exc.ProgrammingError):
            with session_scope(engine) as session:
                session.execute(text("SELEC 1"))


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_lost_postgres_connection_inside_session_scope_is_a_store_error(engine, postgres_admin) -> None:
    with pytest.raises(StoreError) as caught:
        with session_scope(engine) as session:
            pid = session.execute(text("SELECT pg_backend_pid()")).scalar()
            with postgres_admin.begin() as admin:
                admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            session.execute(text("SELECT 1"))
    assert "\n" not in str(caught.value)
    # The pool recovers: the next scope gets a fresh connection (pool_pre_ping).
    with session_scope(engine) as session:
        assert session.execute(text("SELECT 1")).scalar() == 1


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_pooled_connection_killed_while_idle_is_replaced_transparently(engine, postgres_admin) -> None:
    """A server restart between two requests must not fail the second one (pool_pre_ping)."""
    with engine.connect() as connection:
        pid = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    with postgres_admin.begin() as admin:  # the connection sits idle in the pool meanwhile
        admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    with session_scope(engine) as session:
        assert session.execute(text("SELECT pg_backend_pid()")).scalar() != pid


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_postgres_session_time_zone_does_not_leak_into_values(engine) -> None:
    """The test engines use a +05:30 session time zone; values still come back in UTC."""
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SHOW timezone").scalar() == "Asia/Kolkata"
