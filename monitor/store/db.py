"""Database engines, schema creation and sessions for the store.

Responsible for turning the configured ``database:`` URL into a SQLAlchemy engine that
is set up the same way on every connection (SQLite: WAL, foreign keys, a busy timeout;
PostgreSQL: pre-ping and a connect timeout), for creating the tables, and for turning
database failures a user can hit into a one-line :class:`StoreError` with the URL's
credentials masked. Nothing here runs at import time: callers pass the engine around.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError, SQLAlchemyError
from sqlmodel import Session

from monitor.redact import redact_text

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 5000
POSTGRES_CONNECT_TIMEOUT_S = 10
_MAX_REASON_CHARS = 300


class StoreError(Exception):
    """The database or the snapshot folder cannot be used; the message is one line."""


_INSERTS = {"sqlite": sqlite_insert, "postgresql": postgresql_insert}


def dialect_insert(dialect_name: str) -> Any:
    """The dialect's ``insert`` construct, which has ``on_conflict_do_*`` (SQLite and PostgreSQL).

    Raises:
        StoreError: another database.
    """
    try:
        return _INSERTS[dialect_name]
    except KeyError:
        raise StoreError(f"{dialect_name} is not supported; use SQLite or PostgreSQL") from None


def one_line(exc: BaseException) -> str:
    """Describe a database or OS error in one line with credentials masked.

    Args:
        exc: any exception; for SQLAlchemy errors the driver's own message is used,
            without the SQL statement and parameters SQLAlchemy appends.

    Returns:
        A single line of at most about 300 characters.
    """
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc) or exc.__class__.__name__
    text = " ".join(text.split())  # drivers put hints on extra lines; callers need one
    if len(text) > _MAX_REASON_CHARS:
        text = text[: _MAX_REASON_CHARS - 3] + "..."
    return redact_text(text)


def safe_url(url: str | URL) -> str:
    """The URL as it may be shown to a person: password and user masked."""
    try:
        parsed = make_url(url) if isinstance(url, str) else url
        shown = parsed.render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        shown = str(url)
    return redact_text(shown)


def _set_sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Per connection, because SQLite forgets everything but journal_mode when a
    # connection closes; foreign_keys in particular is off by default.
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        # NORMAL is safe in WAL mode (no corruption on power loss, at worst the last
        # commits are lost) and avoids an fsync on every commit.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    finally:
        cursor.close()


def _sqlite_file(url: URL) -> Path | None:
    """The database file of a SQLite URL, or None for in-memory and URI forms."""
    database = url.database or ""
    if database in ("", ":memory:") or url.query.get("uri") or database.startswith("file:"):
        return None
    return Path(database).expanduser()


def create_engine_for(
    url: str,
    *,
    connect_args: Mapping[str, Any] | None = None,
    check: bool = True,
) -> Engine:
    """Create an engine for a SQLite or PostgreSQL URL and check that it can connect.

    SQLite gets WAL mode, ``synchronous=NORMAL``, ``foreign_keys=ON`` and a 5 s busy
    timeout on every connection, and the folder of its file is created. PostgreSQL
    gets ``pool_pre_ping`` (a restarted server costs one failed ping, not a failed
    request) and a 10 s connect timeout.

    Args:
        url: ``sqlite:///path/monitor.db`` or ``postgresql+psycopg://user@host:5432/db``.
        connect_args: extra DBAPI connect arguments, e.g.
            ``{"options": "-csearch_path=myschema"}`` for PostgreSQL.
        check: open one connection now so that a bad URL fails here, not later.

    Returns:
        The engine; the caller owns it and calls ``dispose()`` when done.

    Raises:
        StoreError: unsupported or malformed URL, a SQLite folder that cannot be
            created, or a database that cannot be reached; one line, no password.
    """
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        # Not echoed: an unparsable URL cannot be redacted reliably and may hold a password.
        raise StoreError(
            "the database URL is not a valid URL; "
            "use sqlite:///path/monitor.db or postgresql+psycopg://user@host:5432/db"
        ) from None
    shown = safe_url(parsed)
    backend = parsed.get_backend_name()
    args: dict[str, Any] = dict(connect_args or {})
    kwargs: dict[str, Any] = {}
    if backend == "sqlite":
        db_file = _sqlite_file(parsed)
        if db_file is not None:
            try:
                db_file.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(
                    f"cannot create the folder for database {shown}: {one_line(exc)}; "
                    "check the path and its permissions"
                ) from None
        args.setdefault("timeout", SQLITE_BUSY_TIMEOUT_MS / 1000)
    elif backend == "postgresql":
        kwargs["pool_pre_ping"] = True
        # Without a timeout psycopg waits for the OS, minutes on a host that drops packets.
        args.setdefault("connect_timeout", POSTGRES_CONNECT_TIMEOUT_S)
    else:
        raise StoreError(
            f"database {shown} is not supported; "
            "use sqlite:///path/monitor.db or postgresql+psycopg://user@host:5432/db"
        )
    try:
        engine = create_engine(parsed, connect_args=args, **kwargs)
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        raise StoreError(f"cannot use database {shown}: {one_line(exc)}") from None
    if backend == "sqlite":
        event.listen(engine, "connect", _set_sqlite_pragmas)
    if check:
        try:
            with engine.connect() as connection:
                connection.exec_driver_sql("SELECT 1")
        except SQLAlchemyError as exc:
            engine.dispose()
            log.debug("database check failed", exc_info=True)
            raise StoreError(
                f"cannot connect to database {shown}: {one_line(exc)}; "
                "check that the server is running and the `database:` URL is right"
            ) from None
    return engine


def init_schema(engine: Engine) -> None:
    """Make sure the database has this release's tables (idempotent).

    A new, empty database gets every table (the Alembic migrations, run to the newest
    revision); one already at the newest revision is left alone; any other is refused
    (see :func:`monitor.store.schema.ensure_schema`): changing an existing database is
    `monitor db upgrade`'s job.

    Args:
        engine: from :func:`create_engine_for`.

    Raises:
        SchemaOutdated: the database was made by another release; the message names
            `monitor db upgrade`.
        StoreError: the database refused (unreachable, read-only, no permission).
    """
    from monitor.store.schema import ensure_schema

    ensure_schema(engine)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits when the block ends and rolls back when it raises.

    Objects stay readable after the block (``expire_on_commit=False``), so a caller
    can return rows it loaded inside the block.

    Args:
        engine: from :func:`create_engine_for`.

    Yields:
        A SQLModel session.

    Raises:
        StoreError: the database went away, is locked or refused (see
            :func:`database_failed`); other exceptions raised in the block pass
            through unchanged.
    """
    session = Session(engine, expire_on_commit=False)
    try:
        yield session
        session.commit()
    except BaseException as exc:
        _rollback_quietly(session)
        if not database_failed(exc):
            raise
        log.debug("database operation failed", exc_info=True)
        raise StoreError(f"database {safe_url(engine.url)} failed: {one_line(exc)}") from exc
    finally:
        session.close()


# SQLSTATEs of failures of the database itself, not of a statement, that PostgreSQL
# reports as a ProgrammingError or InternalError where SQLite says OperationalError:
# a missing table, column or schema (another release's database, or one dropped under
# us), no permission, a read-only server.
_POSTGRES_DATABASE_FAILURES = frozenset({"42P01", "42703", "3F000", "42501", "25006"})


def database_failed(exc: BaseException) -> bool:
    """Whether an exception means the database cannot be used as it is (it went away, is
    locked, refused, or lacks a table), the same on SQLite and PostgreSQL."""
    if isinstance(exc, OperationalError):
        return True
    return isinstance(exc, DBAPIError) and getattr(exc.orig, "sqlstate", None) in _POSTGRES_DATABASE_FAILURES


def _rollback_quietly(session: Session) -> None:
    # A rollback on a dead connection raises too; the first error is the one to report.
    try:
        session.rollback()
    except SQLAlchemyError:
        log.debug("rollback failed", exc_info=True)
