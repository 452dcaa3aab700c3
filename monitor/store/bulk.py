"""Bulk writes: many rows in one statement, the cheapest way each database offers.

Responsible for the two write shapes of the recording hot path, a batch of stills at a
time: :func:`insert_rows` (new rows, optionally skipping ones whose key exists, with
columns back) and :func:`add_counts` (counter rows inserted or added to).

On PostgreSQL each call is **one statement with one parameter**: the rows as a JSON
array, turned back into rows of the table's own type on the server,
``INSERT INTO t (...) SELECT ... FROM json_populate_recordset(NULL::t, :rows)``. The SQL
text never changes with the number of rows, so SQLAlchemy compiles it once, psycopg
parses it once and the server prepares it once; ``json.dumps`` (C) is the only
per-value work in Python. The alternatives measured on the recording benchmark
(`bench/queue_load.py`, client CPU per still): ORM objects 1.1 ms; a multi-row
``VALUES`` (what executemany becomes; psycopg does not cache statements with over 50
parameters) or one array parameter per column with ``unnest`` 0.8 ms (psycopg quotes
every array element in Python); this 0.45 ms. On SQLite, executemany is already one
prepared statement run in C.

Nothing here commits; both take the caller's session.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

from sqlalchemy import Table, Text, bindparam, cast, func, literal_column, select
from sqlalchemy.dialects.postgresql import JSON as JSON_SQL
from sqlalchemy.engine import Row
from sqlmodel import Session

from monitor.store.db import dialect_insert
from monitor.store.tables import UTCDateTime



def insert_rows(
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    session: Session,
    returning: Sequence[str] = (),
    skip_existing: Sequence[str] = (),
) -> list[Row[Any]]:
    """Insert ``rows`` (dicts with the same keys) in one statement.

    Args:
        table: the table.
        rows: one dict per row, every dict with the same columns.
        session: an open session (not committed).
        returning: columns to return for each inserted row.
        skip_existing: a unique key; rows whose key is already taken are skipped
            (``ON CONFLICT (key) DO NOTHING``) and return nothing.

    Returns:
        The ``returning`` columns of each inserted row, **in no particular order**:
        return a unique column to match them up.
    """
    if not rows:
        return []
    columns = tuple(rows[0])
    dialect = _dialect(session)
    statement = _insert_statement(dialect, table, columns, tuple(returning), tuple(skip_existing), ())
    result = session.execute(statement, _parameters(dialect, table, columns, rows))
    return list(result.all()) if returning else []


def add_counts(table: Table, rows: Sequence[Mapping[str, Any]], *, keys: Sequence[str], session: Session) -> None:
    """Insert counter rows, or add their counts to the rows already there.

    Rows with the same key are summed first (PostgreSQL refuses to update one row twice
    in one statement), then written in key order, so concurrent writers lock shared
    counter rows in one order and cannot deadlock.

    Args:
        table: a table whose primary key (or a unique key) is ``keys``.
        rows: dicts with every key column and the counter columns to add.
        keys: the conflict columns.
        session: an open session (not committed).
    """
    if not rows:
        return
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        key = tuple(row[k] for k in keys)
        if key in merged:
            total = merged[key]
            for column, value in row.items():
                if column not in keys:
                    total[column] += value
        else:
            merged[key] = dict(row)
    columns = tuple(rows[0])
    counters = tuple(column for column in columns if column not in keys)
    dialect = _dialect(session)
    statement = _insert_statement(dialect, table, columns, (), tuple(keys), counters)
    session.execute(statement, _parameters(dialect, table, columns, [merged[key] for key in sorted(merged)]))


def _dialect(session: Session) -> str:
    name = session.get_bind().dialect.name
    dialect_insert(name)  # refuses other databases
    return name


def _parameters(dialect: str, table: Table, columns: tuple[str, ...], rows: Sequence[Mapping[str, Any]]) -> Any:
    if dialect == "postgresql":  # all rows as one JSON array of objects
        stamps = [column for column in columns if isinstance(table.c[column].type, UTCDateTime)]
        if stamps:
            rows = [{**row, **{column: _utc_text(row[column]) for column in stamps}} for row in rows]
        return {"rows": json.dumps(rows, allow_nan=False, separators=(",", ":"))}
    return list(rows)  # executemany


def _utc_text(value: datetime | None) -> str | None:
    """What :class:`UTCDateTime` stores, as the ISO text PostgreSQL parses."""
    if value is None:
        return None
    if value.utcoffset() is None:
        raise ValueError("datetimes stored must be timezone-aware; use datetime.now(timezone.utc)")
    return value.astimezone(timezone.utc).isoformat()


def _qualified_name(table: Table) -> str:
    quote = '"{}"'.format
    return f"{quote(table.schema)}.{quote(table.name)}" if table.schema else quote(table.name)


@lru_cache(maxsize=64)
def _insert_statement(
    dialect: str,
    table: Table,
    columns: tuple[str, ...],
    returning: tuple[str, ...],
    conflict: tuple[str, ...],
    add: tuple[str, ...],
) -> Any:
    """Built once per shape: building ``excluded`` and the unnest call is not free."""
    insert = dialect_insert(dialect)
    if dialect == "postgresql":
        # The server turns the JSON back into rows of the table's own type, so each value
        # is parsed by its column's type: no casts or per-column parameters here.
        row_type = literal_column(f"NULL::{_qualified_name(table)}")
        rows = func.json_populate_recordset(row_type, cast(bindparam("rows", type_=Text()), JSON_SQL))
        source = rows.table_valued(*columns)
        statement = insert(table).from_select(list(columns), select(*(source.c[column] for column in columns)))
    else:
        statement = insert(table)
    if conflict and add:
        statement = statement.on_conflict_do_update(
            index_elements=list(conflict),
            set_={column: table.c[column] + statement.excluded[column] for column in add},
        )
    elif conflict:
        statement = statement.on_conflict_do_nothing(index_elements=list(conflict))
    if returning:
        statement = statement.returning(*(table.c[column] for column in returning))
    return statement
