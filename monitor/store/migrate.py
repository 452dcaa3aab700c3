"""Bring databases created by an earlier release up to the current table shapes.

Responsible for the columns added to an existing table since the first release
(``review_items.version`` and ``crop``). :func:`monitor.store.init_schema` creates missing tables but
never alters one, so without this a database made before the review UI existed would
refuse every insert. New tables need nothing here. Replace with real migrations (Alembic)
when changes go beyond added columns.
"""

from __future__ import annotations

import logging

from sqlalchemy import inspect
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from monitor.store.db import StoreError, one_line, safe_url

log = logging.getLogger(__name__)

# table -> (column, DDL type and default) added after the table first shipped
ADDED_COLUMNS: dict[str, list[tuple[str, str]]] = {
    "review_items": [("version", "INTEGER NOT NULL DEFAULT 0"), ("crop", "JSON")],
}


def add_missing_columns(engine: Engine) -> list[str]:
    """Add the columns listed in ``ADDED_COLUMNS`` to tables that lack them (idempotent).

    Args:
        engine: an engine whose tables were created by :func:`monitor.store.init_schema`.

    Returns:
        ``table.column`` for each column added (empty when the database was up to date).

    Raises:
        StoreError: the database refused the change.
    """
    added: list[str] = []
    try:
        inspector = inspect(engine)
        existing_tables = set(inspector.get_table_names())
        for table, columns in ADDED_COLUMNS.items():
            if table not in existing_tables:
                continue
            present = {column["name"] for column in inspector.get_columns(table)}
            for name, ddl in columns:
                if name in present:
                    continue
                with engine.begin() as connection:
                    connection.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {name} {ddl}")
                added.append(f"{table}.{name}")
                log.info("added column %s.%s to database %s", table, name, safe_url(engine.url))
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot upgrade the tables of database {safe_url(engine.url)}: {one_line(exc)}") from exc
    return added
