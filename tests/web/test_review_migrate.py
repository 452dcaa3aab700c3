"""A database made before the review UI (no ``review_items.version``) is brought up to date."""

from __future__ import annotations

import sqlite3

from sqlmodel import Session

from monitor.store import create_engine_for, init_schema, record_predictions, session_scope, sync_sites_and_cameras
from monitor.store.migrate import add_missing_columns
from monitor.store.tables import ReviewItem
from review_helpers import outcome


def test_an_old_review_items_table_gets_the_version_column(tmp_path, web_config, snapshots):
    db = tmp_path / "old.db"
    engine = create_engine_for(f"sqlite:///{db}")
    init_schema(engine)
    with session_scope(engine) as session:
        sync_sites_and_cameras(web_config, session=session)
        (old_id,) = record_predictions([outcome()], session=session, snapshots=snapshots)
    engine.dispose()
    # As the first release left it: the same table without the column.
    with sqlite3.connect(db) as connection:
        connection.execute("ALTER TABLE review_items DROP COLUMN version")

    engine = create_engine_for(f"sqlite:///{db}")
    init_schema(engine)
    assert add_missing_columns(engine) == ["review_items.version"]
    assert add_missing_columns(engine) == []  # idempotent
    with session_scope(engine) as session:
        (new_id,) = record_predictions([outcome(seed=1)], session=session, snapshots=snapshots)
    with Session(engine) as session:
        assert session.get(ReviewItem, old_id).version == 0 and session.get(ReviewItem, new_id).version == 0
    engine.dispose()
