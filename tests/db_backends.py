"""Which database the database-facing tests run on, and fresh PostgreSQL schemas for them.

The suite runs on SQLite by default; with ``MONITOR_TEST_DATABASE=postgresql`` (what
``scripts/test`` sets for its second pass) the shared fixtures that give a test its
database (``database_url`` in tests/conftest.py, the web and CLI configs) give a fresh
PostgreSQL schema instead. PostgreSQL comes from ``$MONITOR_TEST_POSTGRES_URL``
(default: the local trust-auth server, database ``test``); a schema is selected with
``search_path`` in the URL itself, so subprocesses (`monitor run`) use it too, and it is
dropped after the test. Unreachable PostgreSQL skips, unless ``MONITOR_REQUIRE_POSTGRES``
is set (CI), where it fails.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy.engine import make_url

POSTGRES_URL = os.environ.get("MONITOR_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
BACKENDS = ("sqlite", "postgresql")


def selected_backend() -> str:
    """``sqlite`` (default) or ``postgresql``, from ``$MONITOR_TEST_DATABASE``."""
    backend = os.environ.get("MONITOR_TEST_DATABASE", "sqlite").strip().lower() or "sqlite"
    if backend not in BACKENDS:
        raise pytest.UsageError(f"MONITOR_TEST_DATABASE={backend!r}: use sqlite or postgresql")
    return backend


def schema_url(schema: str) -> str:
    """The test PostgreSQL URL with ``search_path`` set to ``schema`` (works in any process)."""
    url = make_url(POSTGRES_URL)
    return url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)


class PostgresSchemas:
    """Creates throwaway schemas on the test server and drops them all at the end."""

    def __init__(self) -> None:
        self._engine: Any = None
        self._created: list[str] = []

    def _admin(self) -> Any:
        if self._engine is None:
            engine = sqlalchemy.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 5})
            try:
                with engine.connect() as connection:
                    connection.exec_driver_sql("SELECT 1")
            except sqlalchemy.exc.SQLAlchemyError as exc:
                engine.dispose()
                reason = f"PostgreSQL not reachable at {make_url(POSTGRES_URL).render_as_string()}: " \
                         f"{str(getattr(exc, 'orig', exc)).splitlines()[0]}; set MONITOR_TEST_POSTGRES_URL"
                if os.environ.get("MONITOR_REQUIRE_POSTGRES"):
                    pytest.fail(reason)
                pytest.skip(reason)
            self._engine = engine
        return self._engine

    def create(self, prefix: str = "pgmode") -> str:
        """A new empty schema; returns a URL that uses it."""
        schema = f"{prefix}_{uuid.uuid4().hex[:16]}"
        with self._admin().begin() as connection:
            connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        self._created.append(schema)
        return schema_url(schema)

    def drop(self, url: str) -> None:
        """Drop the schema behind a URL from :meth:`create` (its engines must be disposed)."""
        schema = url.rsplit("search_path%3D", 1)[-1]
        if schema in self._created:
            self._created.remove(schema)
            # One transaction per schema: dropping many at once runs out of lock slots.
            with self._admin().begin() as connection:
                connection.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

    def drop_all(self) -> None:
        for schema in list(self._created):
            self.drop(schema_url(schema))
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


def sqlite_url(folder: Path) -> str:
    return f"sqlite:///{folder / 'data' / 'monitor.db'}"


def query(url: str, sql: str, **params: Any) -> list[tuple]:
    """Run one read query on a test database by URL (instead of sqlite3.connect)."""
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(sqlalchemy.text(sql), params).all()]
    finally:
        engine.dispose()


def dump_text(url: str) -> str:
    """Every row of every table as text (to check that no secret was stored anywhere)."""
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as connection:
            names = sqlalchemy.inspect(connection).get_table_names()
            return "\n".join(
                str(tuple(row)) for name in names
                for row in connection.execute(sqlalchemy.text(f'SELECT * FROM "{name}"')).all()
            )
    finally:
        engine.dispose()
