"""A database made before the review UI and before migrations is refused, then upgraded in place."""

from __future__ import annotations

import pytest
from alembic import command
from sqlmodel import Session

from monitor.store import create_engine_for, init_schema, record_predictions, session_scope, sync_sites_and_cameras
from monitor.store.schema import SchemaOutdated, _config, head_revision, upgrade_schema
from monitor.store.tables import ReviewItem
from review_helpers import outcome


def test_an_old_review_items_table_is_refused_then_gets_the_version_column(web_config, snapshots):
    engine = create_engine_for(web_config.database)  # empty: the `engine` fixture would create the tables
    # As the first release left it: that release's tables (revision 0001's), no version
    # table, no review_items.version column, and one review item.
    with engine.begin() as connection:
        command.upgrade(_config(connection), "0001")
        connection.exec_driver_sql("DROP TABLE alembic_version")
        connection.exec_driver_sql("ALTER TABLE review_items DROP COLUMN version")
        connection.exec_driver_sql("INSERT INTO sites (id, name) VALUES ('north', 'North')")
        connection.exec_driver_sql(
            "INSERT INTO cameras (id, site_id, name, url_display, enabled) VALUES ('gate', 'north', 'Gate', '', TRUE)")
        connection.exec_driver_sql(
            "INSERT INTO review_items (site_id, camera_id, captured_at, label, confidence, probabilities, model_id, "
            "reason, status, snapshot, created_at) VALUES ('north', 'gate', '2026-07-01 12:00:00.000000', 'grizzly', "
            "0.9, '{}', 'old', 'positive', 'pending', 'north/gate/old.jpg', '2026-07-01 12:00:00.000000')")
        old_id = connection.exec_driver_sql("SELECT max(id) FROM review_items").scalar_one()

    with pytest.raises(SchemaOutdated, match=r"run `monitor db upgrade`"):
        init_schema(engine)
    assert upgrade_schema(engine) == (None, head_revision())
    assert upgrade_schema(engine) == (head_revision(), head_revision())  # idempotent
    init_schema(engine)  # now accepted
    with session_scope(engine) as session:
        sync_sites_and_cameras(web_config, session=session)
        (new_id,) = record_predictions([outcome(seed=1)], session=session, snapshots=snapshots)
    with Session(engine) as session:
        assert session.get(ReviewItem, old_id).version == 0 and session.get(ReviewItem, new_id).version == 0
        assert session.get(ReviewItem, old_id).label == "grizzly"
    engine.dispose()
