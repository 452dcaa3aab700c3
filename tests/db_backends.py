"""Which database a test runs on, and fresh PostgreSQL schemas for the tests.

Every test that needs a database gets it from one of the fixtures in tests/conftest.py,
which all build on this module:

* ``database_url``: an empty database on the backend under test. That is SQLite by
  default and PostgreSQL with ``MONITOR_TEST_DATABASE=postgresql``, which is how
  ``scripts/test`` runs its second pass. In that pass only the tests that use
  ``database_url`` run (see ``pytest_collection_modifyitems``); the others gain nothing
  from running again.
* ``backend_url`` (and the ``backend`` it is parametrized by): each backend in turn,
  within one run, for the tests that must show both (the store, rollout and scale-out
  tests). They already ran on PostgreSQL in the first pass, so the second one leaves
  them out.
* ``postgres_url``: PostgreSQL only, for what needs one shared server (many processes).

PostgreSQL comes from ``$MONITOR_TEST_POSTGRES_URL`` (default: the local trust-auth
server, database ``test``). Each test gets a fresh schema, selected in the URL itself
(``options=-csearch_path=...``) so subprocesses (`monitor run`) use it too, with a session
time zone other than UTC, as on many servers (values must still come back in UTC). The
schema is dropped after the test. Unreachable PostgreSQL skips, unless
``MONITOR_REQUIRE_POSTGRES`` is set (CI), where it fails.
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
# Not UTC, and not a whole number of hours from it: a time stored or read in the
# session's zone instead of UTC shows.
SESSION_TIME_ZONE = "Asia/Kolkata"


def selected_backend() -> str:
    """``sqlite`` (default) or ``postgresql``, from ``$MONITOR_TEST_DATABASE``."""
    backend = os.environ.get("MONITOR_TEST_DATABASE", "sqlite").strip().lower() or "sqlite"
    if backend not in BACKENDS:
        raise pytest.UsageError(f"MONITOR_TEST_DATABASE={backend!r}: use sqlite or postgresql")
    return backend


def schema_url(schema: str) -> str:
    """The test PostgreSQL URL using ``schema`` (in any process) and a non-UTC session time zone."""
    url = make_url(POSTGRES_URL)
    options = f"-csearch_path={schema} -ctimezone={SESSION_TIME_ZONE}"
    return url.update_query_dict({"options": options}).render_as_string(hide_password=False)


class PostgresSchemas:
    """Creates throwaway schemas on the test server and drops them all at the end."""

    def __init__(self) -> None:
        self._engine: Any = None
        self._created: dict[str, str] = {}  # URL -> schema

    def admin(self) -> Any:
        """An engine on the test database's default schema (to create, drop, kill sessions)."""
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

    def create(self, prefix: str = "test") -> str:
        """A new empty schema; returns a URL that uses it."""
        schema = f"{prefix}_{uuid.uuid4().hex[:16]}"
        with self.admin().begin() as connection:
            connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        url = schema_url(schema)
        self._created[url] = schema
        return url

    def drop(self, url: str) -> None:
        """Drop the schema behind a URL from :meth:`create` (its engines must be disposed)."""
        schema = self._created.pop(url, None)
        if schema is not None:
            # One transaction per schema: dropping many at once runs out of lock slots.
            with self.admin().begin() as connection:
                connection.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

    def drop_all(self) -> None:
        for url in list(self._created):
            self.drop(url)
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


def new_database(request: pytest.FixtureRequest, backend: str, folder: Path) -> str:
    """The URL of an empty database on ``backend`` for this test: a SQLite file under
    ``folder``, or a fresh PostgreSQL schema dropped after the test."""
    if backend == "sqlite":
        return sqlite_url(folder)
    schemas: PostgresSchemas = request.getfixturevalue("postgres_schemas")
    url = schemas.create()
    request.addfinalizer(lambda: schemas.drop(url))  # runs after the test's own fixtures closed
    return url


def runs_on_both_backends(item: pytest.Item) -> bool:
    """Whether a test is parametrized over the backends (the ``backend`` fixture)."""
    callspec = getattr(item, "callspec", None)
    return callspec is not None and "backend" in callspec.params


def sqlite_url(folder: Path) -> str:
    return f"sqlite:///{folder / 'data' / 'monitor.db'}"


def open_database(config: Any) -> sqlalchemy.engine.Engine:
    """An engine on a config's database, with every table and the config's sites and
    cameras written (as `monitor run` would leave it); dispose it after."""
    from monitor.store import create_engine_for, init_schema, session_scope, sync_sites_and_cameras

    engine = create_engine_for(config.database)
    init_schema(engine)
    with session_scope(engine) as session:
        sync_sites_and_cameras(config, session=session)
    return engine


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
