"""Which schema revision a database is at, and bringing it to the newest (Alembic).

Responsible for the rule every command follows when it opens the database:

* a brand-new, empty database is migrated to the newest revision on first use, so the
  zero-setup default (`monitor run` on a new SQLite file) needs no extra step;
* a database at the newest revision is used as it is;
* anything else (made by an older release, with or without migrations, or by a newer
  release) is refused with a one-line :class:`SchemaOutdated` that names
  `monitor db upgrade`, because changing the tables of a database other processes use
  must be a deliberate step, taken once, with a backup.

Migrations run on one connection inside one transaction that first takes a lock
(PostgreSQL: an advisory transaction lock; SQLite: ``BEGIN IMMEDIATE``), so several
workers starting at once on a new database do not race to create the same tables.

Run as ``python -m monitor.store.schema revision "what changed"`` to write a new
revision with autogenerate (for developers; see ``monitor/store/migrations``).
"""

from __future__ import annotations

import logging
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

log = logging.getLogger(__name__)


def _quiet_alembic() -> None:
    if not log.isEnabledFor(logging.DEBUG):
        # Alembic logs every step (and its plugins, on import) at INFO; commands print
        # their own one-line results, and -v still shows Alembic's.
        logging.getLogger("alembic").setLevel(logging.WARNING)


_quiet_alembic()

from alembic import command  # noqa: E402  (after quieting: it logs on import)
from alembic.config import Config  # noqa: E402
from alembic.runtime.migration import MigrationContext  # noqa: E402
from alembic.script import ScriptDirectory  # noqa: E402
from sqlalchemy import inspect  # noqa: E402
from sqlalchemy.engine import Connection, Engine  # noqa: E402
from sqlalchemy.exc import SQLAlchemyError  # noqa: E402

from monitor.store.db import StoreError, one_line, safe_url  # noqa: E402

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "alembic_version"
# Any fixed 64-bit number, the same in every process: the PostgreSQL advisory lock
# that serialises schema changes ("bearmon" in ASCII).
_SCHEMA_LOCK_KEY = 0x626561726D6F6E
UPGRADE_HINT = "back it up, then run `monitor db upgrade` (with the same -c config)"


class SchemaOutdated(StoreError):
    """The database's tables are not the ones this release uses; the message names the fix."""


@dataclass(frozen=True)
class SchemaStatus:
    """Where a database stands.

    Attributes:
        current: its revision; None when it has no version table.
        head: the newest revision this release knows.
        has_tables: it holds tables (a database without a version table but with
            tables was made by a release before migrations).
    """

    current: str | None
    head: str
    has_tables: bool

    @property
    def fresh(self) -> bool:
        return self.current is None and not self.has_tables

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head


@lru_cache(maxsize=1)
def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


def _config(connection: Connection | None = None) -> Config:
    _quiet_alembic()
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision this release knows."""
    head = _script().get_current_head()
    if head is None:  # only possible with an empty versions folder, i.e. a broken install
        raise StoreError(f"no migrations found in {MIGRATIONS_DIR}; reinstall the monitor")
    return head


def _status(connection: Connection) -> SchemaStatus:
    _quiet_alembic()
    current = MigrationContext.configure(connection).get_current_revision()
    tables = set(inspect(connection).get_table_names()) - {VERSION_TABLE}
    return SchemaStatus(current=current, head=head_revision(), has_tables=bool(tables))


def schema_status(engine: Engine) -> SchemaStatus:
    """Read the database's revision without changing anything.

    Raises:
        StoreError: the database cannot be read.
    """
    try:
        with engine.connect() as connection:
            return _status(connection)
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read the schema of database {safe_url(engine.url)}: {one_line(exc)}") from None


@contextmanager
def _locked(engine: Engine) -> Iterator[Connection]:
    """One connection in one transaction that holds the schema lock until it commits."""
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK_KEY})")
        else:
            # Takes SQLite's write lock now, so a second process waits (busy timeout)
            # instead of both reading "empty" and both creating tables.
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        yield connection
        connection.commit()


def ensure_schema(engine: Engine) -> SchemaStatus:
    """Use the database if it is at the newest revision; create everything if it is empty.

    Args:
        engine: from :func:`monitor.store.create_engine_for`.

    Returns:
        The status after the call (always up to date).

    Raises:
        SchemaOutdated: the database was made by an older (or newer) release; the
            message names `monitor db upgrade`.
        StoreError: the database cannot be read or written.
    """
    status = schema_status(engine)
    if status.up_to_date:
        return status
    if status.fresh:
        try:
            with _locked(engine) as connection:
                # Another process may have created it while this one waited for the lock.
                status = _status(connection)
                if status.fresh:
                    command.upgrade(_config(connection), "head")
                    log.debug("created the tables of database %s at revision %s", safe_url(engine.url), status.head)
        except SQLAlchemyError as exc:
            log.debug("creating the schema failed", exc_info=True)
            raise StoreError(f"cannot create tables in database {safe_url(engine.url)}: {one_line(exc)}") from None
        status = schema_status(engine)
        if status.up_to_date:
            return status
    raise SchemaOutdated(_outdated_message(engine, status))


def _outdated_message(engine: Engine, status: SchemaStatus) -> str:
    shown = safe_url(engine.url)
    if status.current is not None and not _known(status.current):
        return (
            f"database {shown} is at schema revision {status.current}, newer than this release "
            f"(newest known: {status.head}); upgrade the monitor on this machine"
        )
    found = status.current or "an unversioned schema from before migrations"
    return f"database {shown} has {found}, this release needs revision {status.head}; {UPGRADE_HINT}"


def _known(revision: str) -> bool:
    try:
        return _script().get_revision(revision) is not None
    except Exception:  # alembic raises several kinds for an unknown id
        return False


def upgrade_schema(engine: Engine) -> tuple[str | None, str]:
    """Migrate the database to the newest revision (what `monitor db upgrade` does).

    Old databases made before migrations existed are adopted: the missing tables,
    indexes and columns are added and their data is kept.

    Args:
        engine: from :func:`monitor.store.create_engine_for`.

    Returns:
        (revision before, revision after); equal when there was nothing to do.

    Raises:
        SchemaOutdated: the database is newer than this release.
        StoreError: a migration failed; nothing was changed (one transaction).
    """
    try:
        with _locked(engine) as connection:
            before = _status(connection)
            if before.current is not None and not _known(before.current):
                raise SchemaOutdated(_outdated_message(engine, before))
            if not before.up_to_date:
                command.upgrade(_config(connection), "head")
    except SQLAlchemyError as exc:
        log.debug("migration failed", exc_info=True)
        raise StoreError(f"cannot upgrade database {safe_url(engine.url)}: {one_line(exc)}") from None
    after = schema_status(engine)
    if before.current != after.current:
        log.info("database %s upgraded from %s to %s", safe_url(engine.url), before.current, after.current)
    return before.current, after.head


def _write_revision(message: str) -> None:
    """Autogenerate a revision against a scratch SQLite database at the current head."""
    from sqlalchemy import create_engine

    with tempfile.TemporaryDirectory() as scratch:
        engine = create_engine(f"sqlite:///{scratch}/head.db")
        upgrade_schema(engine)
        next_id = f"{int(head_revision()) + 1:04d}"
        with engine.begin() as connection:
            command.revision(_config(connection), message=message, autogenerate=True, rev_id=next_id)
        engine.dispose()


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "revision":
        sys.exit('usage: python -m monitor.store.schema revision "what changed"')
    _write_revision(sys.argv[2])
