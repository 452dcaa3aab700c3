"""Copy a whole installation's database to another one (SQLite to PostgreSQL, typically).

Responsible for `monitor db copy`: every table (review items and decisions, users,
tokens, rollout stages and audit log, hourly counts, alerts and outbox...) is read from
the source in one consistent snapshot and written to the target in one transaction, ids
included, so links between rows and the review history survive. The target must be
empty (new, or only migrated); it is brought to the newest revision first. The source
must already be at the newest revision (`monitor db upgrade` it first), so both have
the same tables. PostgreSQL sequences are moved past the copied ids afterwards.

Snapshot JPEGs are files, not rows: they stay where ``snapshots:`` points.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import Integer, func, insert, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.schema import Table
from sqlmodel import SQLModel

from monitor.store.db import StoreError, one_line, safe_url
from monitor.store.schema import UPGRADE_HINT, SchemaOutdated, ensure_schema, schema_status

log = logging.getLogger(__name__)

DEFAULT_BATCH = 2000


def all_tables() -> list[Table]:
    """Every table of the store, the workers and the rollout, parents before children."""
    from monitor.store import cluster_tables as _cluster  # noqa: F401  (register on the metadata)
    from monitor.store import tables as _store  # noqa: F401
    from rollout import tables as _rollout  # noqa: F401  (the copy moves the whole installation)

    return list(SQLModel.metadata.sorted_tables)


@contextmanager
def _snapshot(engine: Engine) -> Iterator[Connection]:
    """A connection whose reads all see one moment, while other processes keep writing."""
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        else:
            # In WAL mode a read transaction sees the database as of its first read.
            connection.exec_driver_sql("BEGIN")
        try:
            yield connection
        finally:
            connection.rollback()


def _counts(connection: Connection, tables: list[Table]) -> dict[str, int]:
    return {table.name: int(connection.execute(select(func.count()).select_from(table)).scalar_one())
            for table in tables}


def copy_database(
    source: Engine,
    target: Engine,
    *,
    batch: int = DEFAULT_BATCH,
    progress: Callable[[str, int], None] | None = None,
) -> dict[str, int]:
    """Copy every row of ``source`` into the empty database ``target``.

    Args:
        source: the installation's database (it may be in use; a snapshot is read).
        target: an empty database; migrated to the newest revision if it is new.
        batch: rows per insert.
        progress: called with (table, rows copied) after each table.

    Returns:
        table name -> rows copied.

    Raises:
        SchemaOutdated: either database is not at the newest revision.
        StoreError: the target holds data, or a database failed; on failure nothing
            is left in the target (one transaction).
    """
    if batch < 1:
        raise ValueError("batch must be at least 1")
    status = schema_status(source)
    if not status.up_to_date:
        raise SchemaOutdated(
            f"source database {safe_url(source.url)} is at {status.current or 'no revision'}, "
            f"not {status.head}; {UPGRADE_HINT} on the source first"
        )
    ensure_schema(target)
    tables = all_tables()
    shown_source, shown_target = safe_url(source.url), safe_url(target.url)
    try:
        with target.connect() as check:
            filled = {name: n for name, n in _counts(check, tables).items() if n}
        if filled:
            listed = ", ".join(f"{name} ({n})" for name, n in sorted(filled.items())[:4])
            raise StoreError(
                f"target database {shown_target} already holds data ({listed}); copy only into an empty database"
            )
        copied: dict[str, int] = {}
        with _snapshot(source) as reader, target.begin() as writer:
            for table in tables:
                copied[table.name] = _copy_table(reader, writer, table, batch)
                if progress is not None:
                    progress(table.name, copied[table.name])
            if writer.dialect.name == "postgresql":
                _advance_sequences(writer, tables)
            expected = _counts(reader, tables)
            if expected != copied:  # a snapshot read cannot change; anything else is a bug
                raise StoreError(f"copy incomplete: read {expected}, wrote {copied}; nothing was committed")
    except SQLAlchemyError as exc:
        log.debug("copy failed", exc_info=True)
        raise StoreError(f"cannot copy {shown_source} to {shown_target}: {one_line(exc)}") from None
    log.info("copied %d rows from %s to %s", sum(copied.values()), shown_source, shown_target)
    return copied


def _copy_table(reader: Connection, writer: Connection, table: Table, batch: int) -> int:
    order = list(table.primary_key.columns) or list(table.columns)
    result = reader.execution_options(stream_results=True, yield_per=batch).execute(
        select(table).order_by(*order)
    )
    total = 0
    for rows in result.partitions(batch):
        writer.execute(insert(table), [dict(row._mapping) for row in rows])
        total += len(rows)
    return total


def _advance_sequences(writer: Connection, tables: list[Table]) -> None:
    # Rows were inserted with their ids, which does not move PostgreSQL's sequences:
    # without this, the next new row would collide with a copied one.
    for table in tables:
        key = list(table.primary_key.columns)
        if len(key) != 1 or not isinstance(key[0].type, Integer) or key[0].autoincrement is False:
            continue
        column = key[0].name
        sequence = writer.exec_driver_sql(
            "SELECT pg_get_serial_sequence(%(table)s, %(column)s)", {"table": table.name, "column": column}
        ).scalar_one()
        if sequence is None:
            continue
        writer.exec_driver_sql(
            f'SELECT setval(%(sequence)s, COALESCE((SELECT max("{column}") FROM "{table.name}"), 0) + 1, false)',
            {"sequence": sequence},
        )
