"""Alembic migrations: new databases at head, old ones refused by name of the fix, then upgraded."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy
import yaml
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import Session, SQLModel

from scaleout_helpers import T0
from monitor.store import create_engine_for, init_schema
from monitor.store.copy import all_tables
from monitor.store.schema import SchemaOutdated, _config, head_revision, schema_status, upgrade_schema
from monitor.store.tables import ReviewItem
from running_monitor import run_monitor


def make_pre_migration_database(url: str, config, snapshots, make_routed) -> int:
    """A database as a release before migrations left it, holding one review item.

    That release's tables are revision 0001's, made by ``create_all``: no version table,
    and ``review_items`` without the ``version`` column and one index added later.
    """
    engine = create_engine_for(url)
    with engine.begin() as connection:
        command.upgrade(_config(connection), "0001")
        connection.exec_driver_sql("DROP TABLE alembic_version")
        connection.exec_driver_sql("ALTER TABLE review_items DROP COLUMN version")
        connection.exec_driver_sql("DROP INDEX ix_review_items_camera_captured")
        connection.exec_driver_sql("INSERT INTO sites (id, name) VALUES ('north', 'North')")
        connection.exec_driver_sql(
            "INSERT INTO cameras (id, site_id, name, url_display, enabled) VALUES ('gate', 'north', 'Gate', '', true)")
        connection.execute(sqlalchemy.text(
            "INSERT INTO review_items (site_id, camera_id, captured_at, label, confidence, probabilities, model_id, "
            "reason, status, snapshot, created_at) VALUES ('north', 'gate', :t, 'grizzly', 0.9, :p, 'old-model', "
            "'positive', 'pending', 'north/gate/old.jpg', :t)"), {"t": T0, "p": '{"grizzly": 0.9, "none": 0.1}'})
        item_id = connection.exec_driver_sql("SELECT max(id) FROM review_items").scalar_one()
    engine.dispose()
    return int(item_id)


def test_a_new_database_is_created_at_head_with_exactly_the_models_tables(backend_url):
    engine = create_engine_for(backend_url)
    try:
        assert schema_status(engine).fresh
        init_schema(engine)
        status = schema_status(engine)
        assert status.up_to_date and status.current == head_revision()
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            all_tables()  # every model registered on the metadata
            # A model changed without a migration shows up here (add a revision: see
            # monitor/store/migrations/__init__.py).
            assert compare_metadata(context, SQLModel.metadata) == []
        init_schema(engine)  # idempotent
    finally:
        engine.dispose()


def test_a_database_from_before_migrations_is_refused_then_adopted_with_its_data(
    backend_url, scaleout_config, snapshots, make_routed
):
    item_id = make_pre_migration_database(backend_url, scaleout_config, snapshots, make_routed)
    engine = create_engine_for(backend_url)
    try:
        with pytest.raises(SchemaOutdated) as refused:
            init_schema(engine)
        message = str(refused.value)
        assert "\n" not in message and "`monitor db upgrade`" in message and head_revision() in message
        assert upgrade_schema(engine) == (None, head_revision())
        init_schema(engine)
        with engine.connect() as connection:
            indexes = {i["name"] for i in sqlalchemy.inspect(connection).get_indexes("review_items")}
            assert "ix_review_items_camera_captured" in indexes
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, SQLModel.metadata) == []
        with Session(engine) as session:
            item = session.get(ReviewItem, item_id)
            assert item.label == "grizzly" and item.version == 0
    finally:
        engine.dispose()


def test_a_database_at_an_older_revision_is_upgraded_without_losing_rows(backend_url):
    engine = create_engine_for(backend_url)
    try:
        with engine.begin() as connection:
            command.upgrade(_config(connection), "0001")
        with pytest.raises(SchemaOutdated, match="has 0001, this release needs"):
            init_schema(engine)
        with engine.begin() as connection:
            connection.exec_driver_sql("INSERT INTO sites (id, name) VALUES ('north', 'North')")
        assert upgrade_schema(engine) == ("0001", head_revision())
        with engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT name FROM sites").scalar_one() == "North"
    finally:
        engine.dispose()


def test_a_database_from_a_newer_release_is_refused(backend_url):
    engine = create_engine_for(backend_url)
    try:
        init_schema(engine)
        with engine.begin() as connection:
            connection.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
        with pytest.raises(SchemaOutdated, match="newer than this release"):
            init_schema(engine)
        with pytest.raises(SchemaOutdated, match="newer than this release"):
            upgrade_schema(engine)
    finally:
        engine.dispose()


def test_workers_starting_together_on_a_new_database_create_it_once(backend_url):
    engines = [create_engine_for(backend_url) for _ in range(4)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(engines))

    def start(engine) -> None:
        try:
            barrier.wait()
            init_schema(engine)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert errors == []
        with engines[0].connect() as connection:
            assert connection.exec_driver_sql("SELECT count(*) FROM alembic_version").scalar_one() == 1
    finally:
        for engine in engines:
            engine.dispose()


def test_the_commands_name_db_upgrade_and_it_fixes_an_old_database(
    backend_url, scaleout_config, snapshots, make_routed, tmp_path
):
    make_pre_migration_database(backend_url, scaleout_config, snapshots, make_routed)
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"only the path matters: the schema check comes first")
    config = {"database": backend_url, "snapshots": str(tmp_path / "snapshots"),
              "sites": [{"id": "north", "cameras": [{"id": "gate", "path": str(clip)}]}]}
    (tmp_path / "monitor.yaml").write_text(yaml.safe_dump(config))

    for args in (["run", "-c", "monitor.yaml"], ["serve", "-c", "monitor.yaml", "--no-model"],
                 ["queue", "list", "-c", "monitor.yaml"]):
        refused = run_monitor(*args, cwd=tmp_path)
        assert refused.returncode == 1, (args, refused.stderr)
        (line,) = refused.stderr.strip().splitlines()
        assert line.startswith("error: database ") and "run `monitor db upgrade`" in line, line
    status = run_monitor("db", "status", "-c", "monitor.yaml", cwd=tmp_path)
    assert status.returncode == 1 and "run `monitor db upgrade`" in status.stdout

    upgraded = run_monitor("db", "upgrade", "-c", "monitor.yaml", cwd=tmp_path)
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"upgraded from an unversioned schema to revision {head_revision()}" in upgraded.stdout
    again = run_monitor("db", "upgrade", "-c", "monitor.yaml", cwd=tmp_path)
    assert again.returncode == 0 and "already at revision" in again.stdout
    assert run_monitor("db", "status", "-c", "monitor.yaml", cwd=tmp_path).returncode == 0
    listed = run_monitor("queue", "list", "-c", "monitor.yaml", "--json", cwd=tmp_path)
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 1


def test_revision_0004_keeps_the_outbox_and_allows_dead_letters_and_job_leases(backend_url):
    engine = create_engine_for(backend_url)
    try:
        with engine.begin() as connection:
            command.upgrade(_config(connection), "0003")
            connection.exec_driver_sql("INSERT INTO sites (id, name) VALUES ('north', 'North')")
            connection.exec_driver_sql(
                "INSERT INTO cameras (id, site_id, name, url_display, enabled) VALUES ('gate', 'north', 'Gate', '', true)")
            connection.execute(sqlalchemy.text(
                "INSERT INTO alerts (key, site_id, camera_id, captured_at, label, confidence, model_id, created_at) "
                "VALUES ('k-1', 'north', 'gate', :t, 'grizzly', 0.9, 'm', :t)"), {"t": T0})
            for target, status in (("ops", "pending"), ("pager", "delivered")):
                connection.execute(sqlalchemy.text(
                    "INSERT INTO outbox (alert_id, target, camera_id, payload, status, attempts, next_attempt_at, "
                    "created_at) VALUES (1, :target, 'gate', '{\"key\": \"k-1\"}', :status, 3, :t, :t)"),
                    {"target": target, "status": status, "t": T0})
        assert upgrade_schema(engine) == ("0003", head_revision())
        with engine.begin() as connection:
            rows = connection.exec_driver_sql(
                "SELECT target, status, attempts, dead_at, requeued_at FROM outbox ORDER BY id").all()
            assert [tuple(row) for row in rows] == [("ops", "pending", 3, None, None), ("pager", "delivered", 3, None, None)]
            connection.exec_driver_sql("UPDATE outbox SET status = 'dead' WHERE target = 'ops'")
            connection.exec_driver_sql("UPDATE outbox SET status = 'discarded' WHERE target = 'pager'")
            connection.exec_driver_sql("INSERT INTO job_leases (name, owner) VALUES ('drift', 'w1')")
            assert connection.exec_driver_sql("SELECT token FROM job_leases").scalar_one() == 0
        with pytest.raises(sqlalchemy.exc.IntegrityError):  # the status check still holds
            with engine.begin() as connection:
                connection.exec_driver_sql("UPDATE outbox SET status = 'lost'")
        # Ids of pruned entries are never handed out again (SQLite keeps AUTOINCREMENT).
        with engine.begin() as connection:
            connection.exec_driver_sql("DELETE FROM outbox WHERE target = 'pager'")
            connection.exec_driver_sql(
                "INSERT INTO outbox (alert_id, target, camera_id, payload, next_attempt_at, created_at) "
                "VALUES (1, 'sms', 'gate', '{}', '2026-07-01', '2026-07-01')")
            assert connection.exec_driver_sql("SELECT max(id) FROM outbox").scalar_one() == 3

        with engine.begin() as connection:  # and back: dead and discarded entries wait for delivery again
            command.downgrade(_config(connection), "0003")
        with engine.connect() as connection:
            assert {row[0] for row in connection.exec_driver_sql("SELECT status FROM outbox")} == {"pending"}
            assert "job_leases" not in sqlalchemy.inspect(connection).get_table_names()
    finally:
        engine.dispose()
