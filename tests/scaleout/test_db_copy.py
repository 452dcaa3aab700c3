"""`monitor db copy`: a SQLite installation, in use, moves to PostgreSQL with every review kept."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
import sqlalchemy
import yaml
from sqlmodel import Session

from scaleout_helpers import T0, routed
from monitor.config import MonitorConfig
from monitor.store import create_engine_for, init_schema, record_predictions, session_scope, sync_sites_and_cameras
from monitor.store.copy import all_tables
from monitor.store.recording import Recorder
from monitor.store.reviews import decide, undo
from monitor.store.tables import DecisionAction, User
from monitor.store.users import create_api_token, create_user, start_web_session
from rollout.promote import RolloutContext, promote
from running_monitor import run_monitor


def rows_of(engine) -> dict[str, list[tuple]]:
    """Every row of every table, in primary-key order."""
    with engine.connect() as connection:
        return {
            table.name: [tuple(row) for row in connection.execute(
                sqlalchemy.select(table).order_by(*(table.primary_key.columns or table.columns))).all()]
            for table in all_tables()
        }


@pytest.fixture
def installation(tmp_path):
    """A SQLite installation with reviews, users, a rollout promotion and alerts."""
    url = f"sqlite:///{tmp_path / 'data' / 'monitor.db'}"
    config = MonitorConfig(
        database=url, snapshots=tmp_path / "data" / "snapshots",
        sites=[{"id": "north", "cameras": [{"id": c, "url": f"rtsp://10.0.0.1/{c}"} for c in ("gate", "trail", "creek")]},
               {"id": "south", "cameras": [{"id": "lake", "url": "rtsp://10.0.0.2/lake"}]}],
    )
    engine = create_engine_for(url)
    init_schema(engine)
    with session_scope(engine) as session:
        sync_sites_and_cameras(config, session=session)
    from monitor.store import SnapshotStore

    recorder = Recorder(engine, SnapshotStore(config.snapshots), targets_by_site={"north": ["ops"]}, worker="box")
    ids = recorder([routed(c, T0 + timedelta(minutes=i), seed=i, alert=i % 2 == 0)
                    for i, c in enumerate(["gate", "trail", "creek", "lake"] * 5)])
    with session_scope(engine) as session:
        alice = create_user("alice", "alice-pass-123", session=session)
        bob = create_user("bob", "bob-pass-4567", session=session)
        create_api_token("alice", session=session, name="script")
        start_web_session(alice, session=session, lifetime=timedelta(hours=12))
    with Session(engine) as session:
        alice, bob = session.get(User, alice.id), session.get(User, bob.id)
        decide(ids[0], session=session, reviewer=alice, action=DecisionAction.APPROVE)
        decide(ids[1], session=session, reviewer=bob, action=DecisionAction.REJECT, note="a dog")
        decide(ids[2], session=session, reviewer=alice, action=DecisionAction.RELABEL, label="black")
        undo(ids[2], session=session, reviewer=alice)
        decide(ids[3], session=session, reviewer=alice, action=DecisionAction.RELABEL, label="black")
        promote("north", session=session, ctx=RolloutContext.from_config(config), actor="alice", force=True,
                reason="trial")
    engine.dispose()
    (tmp_path / "sqlite.yaml").write_text(yaml.safe_dump({"database": url, "snapshots": str(config.snapshots)}))
    return url, config


def test_copy_moves_every_row_and_new_rows_continue_after_the_copied_ids(installation, postgres_url, tmp_path):
    source_url, config = installation
    copied = run_monitor("db", "copy", "--from", source_url, "--to", postgres_url, cwd=tmp_path)
    assert copied.returncode == 0, copied.stderr
    assert "20 review items, 5 decisions" in copied.stdout

    source, target = create_engine_for(source_url), create_engine_for(postgres_url)
    try:
        before, after = rows_of(source), rows_of(target)
        assert {name: len(rows) for name, rows in after.items() if rows} == \
               {name: len(rows) for name, rows in before.items() if rows}
        assert after == before  # every value, datetimes in UTC, JSON, booleans
        assert len(after["review_decisions"]) == 5 and len(after["rollout_events"]) == 1
        # Every other still alerted (all of them at north's gate and creek); north notifies "ops".
        assert len(after["alerts"]) == 10 and len(after["outbox"]) == 10

        # PostgreSQL's sequences were moved past the copied ids: new rows do not collide.
        from monitor.store import SnapshotStore

        with session_scope(target) as session:
            (new_id,) = record_predictions([routed("gate", T0 + timedelta(days=1))], session=session,
                                           snapshots=SnapshotStore(config.snapshots))
        assert new_id == 21
        with Session(target) as session:
            alice = session.exec(sqlalchemy.select(User).where(User.name == "alice")).scalar_one()
            _, decision = decide(new_id, session=session, reviewer=alice, action=DecisionAction.APPROVE)
            assert decision.id == 6
    finally:
        source.dispose()
        target.dispose()

    # The copied installation works with the commands: reviews are there.
    (tmp_path / "pg.yaml").write_text(yaml.safe_dump({"database": postgres_url,
                                                      "snapshots": str(config.snapshots)}))
    listed = run_monitor("queue", "list", "-c", "pg.yaml", "--status", "approved", "--json", cwd=tmp_path)
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 2

    again = run_monitor("db", "copy", "--from", source_url, "--to", postgres_url, cwd=tmp_path)
    assert again.returncode == 1
    (line,) = again.stderr.strip().splitlines()[-1:]
    assert "already holds data" in line and "copy only into an empty database" in line


def test_copy_refuses_a_source_that_needs_an_upgrade(installation, postgres_url, tmp_path):
    source_url, _ = installation
    engine = create_engine_for(source_url)
    with engine.begin() as connection:
        connection.exec_driver_sql("UPDATE alembic_version SET version_num = '0001'")
    engine.dispose()
    refused = run_monitor("db", "copy", "--from", source_url, "--to", postgres_url, cwd=tmp_path)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1].startswith("error: source database")
    assert "`monitor db upgrade`" in refused.stderr
    target = create_engine_for(postgres_url)
    try:
        with target.connect() as connection:  # nothing was created in the target
            assert sqlalchemy.inspect(connection).get_table_names() == []
    finally:
        target.dispose()


def test_copying_an_installation_in_use_takes_a_consistent_snapshot(installation, postgres_url, tmp_path):
    source_url, config = installation
    engine = create_engine_for(source_url)
    from monitor.store import SnapshotStore

    recorder = Recorder(engine, SnapshotStore(config.snapshots))
    stop = threading.Event()
    written = 0

    def keep_recording() -> None:
        nonlocal written
        step = 0
        while not stop.is_set():
            recorder([routed(c, T0 + timedelta(hours=1, seconds=step), seed=step, alert=False)
                      for c in ("gate", "lake")])
            written += 2
            step += 1

    writer = threading.Thread(target=keep_recording)
    writer.start()
    try:
        time.sleep(0.5)
        copied = run_monitor("db", "copy", "--from", source_url, "--to", postgres_url, "--batch", "7", cwd=tmp_path)
    finally:
        stop.set()
        writer.join(30)
        engine.dispose()
    assert copied.returncode == 0, copied.stderr
    assert written > 0
    target = create_engine_for(postgres_url)
    try:
        with target.connect() as connection:
            items = connection.exec_driver_sql("SELECT count(*) FROM review_items").scalar_one()
            samples = connection.exec_driver_sql("SELECT count(*) FROM samples").scalar_one()
            frames = connection.exec_driver_sql("SELECT sum(frames) FROM camera_hours").scalar_one()
            decisions = connection.exec_driver_sql("SELECT count(*) FROM review_decisions").scalar_one()
    finally:
        target.dispose()
    # Each recorded batch is all or nothing in the copy: rows of one moment, never half a batch.
    assert items == samples == frames and items >= 20 and decisions == 5
