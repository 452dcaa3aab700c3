"""Bulk writes: many rows in one statement, the fastest way each database offers.

Responsible for the two write shapes of the recording hot path, a batch of stills at a
time: :func:`insert_rows` (new rows, optionally skipping ones whose key exists, with
columns back) and :func:`add_counts` (counter rows inserted or added to).

On PostgreSQL each call is **one statement with one array parameter per column**,
``INSERT ... SELECT * FROM unnest(:col1, :col2, ...)``. Its text never changes with the
number of rows, so SQLAlchemy compiles it once, psycopg parses it once and the server
prepares it once; a multi-row ``VALUES`` list (what executemany turns into) has a
parameter per value, which psycopg does not cache past 50, and executemany of single
rows costs a statement per row. Here this is what took `bench/queue_load.py` past
1,000 items/s. On SQLite, executemany is already a cached prepared statement in C.

Nothing here commits; both take the caller's session.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from sqlalchemy import JSON, Table, Text, bindparam, cast, func, select
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Row
from sqlmodel import Session

from monitor.store.db import StoreError

_INSERTS = {"sqlite": sqlite_insert, "postgresql": postgresql_insert}


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
    if name not in _INSERTS:
        raise StoreError(f"bulk writes are not supported on {name}; use SQLite or PostgreSQL")
    return name


def _parameters(dialect: str, table: Table, columns: tuple[str, ...], rows: Sequence[Mapping[str, Any]]) -> Any:
    if dialect == "postgresql":  # one array per column; JSON values go as text (see below)
        json_columns = _json_columns(table, columns)
        return {
            column: [_json_text(row[column]) for row in rows] if column in json_columns
            else [row[column] for row in rows]
            for column in columns
        }
    return list(rows)  # executemany


def _json_columns(table: Table, columns: tuple[str, ...]) -> frozenset[str]:
    return frozenset(column for column in columns if isinstance(table.c[column].type, JSON))


def _json_text(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


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
    insert = _INSERTS[dialect]
    if dialect == "postgresql":
        # A JSON list inside an array parameter would be read as a nested array, so JSON
        # values travel as text and are cast back on the server.
        json_columns = _json_columns(table, columns)
        arrays = [
            bindparam(column, type_=ARRAY(Text() if column in json_columns else table.c[column].type))
            for column in columns
        ]
        source = func.unnest(*arrays).table_valued(*columns).render_derived()
        values = [cast(source.c[column], JSONB) if column in json_columns else source.c[column] for column in columns]
        statement = insert(table).from_select(list(columns), select(*values))
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
