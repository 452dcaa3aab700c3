"""`monitor db`: upgrade the schema, show where it stands, copy an installation to another database.

Responsible for the database-administration commands, registered on the `monitor`
group at the end of :mod:`monitor.cli`. Same error contract as every command: one line
on stderr, exit 2 for bad usage or config, 1 for a runtime failure. URLs are printed
with their password masked.

Moving a running SQLite installation to PostgreSQL (see README, Deployment)::

    monitor db upgrade -c monitor.yaml                  # the SQLite file, to the newest schema
    monitor db copy --from sqlite:///monitor-data/monitor.db \\
                    --to postgresql+psycopg://monitor@db-host:5432/monitor
"""

from __future__ import annotations

import click

from monitor.cli_errors import one_line_errors
from monitor.config import DEFAULT_DATA_DIR, ConfigError, MonitorConfig, default_config, load_config


def _usage_errors() -> tuple[type[BaseException], ...]:
    return (ConfigError,)


def _runtime_errors() -> tuple[type[BaseException], ...]:
    from monitor.store import StoreError

    return (StoreError,)


db_errors = one_line_errors(usage=_usage_errors, failure=_runtime_errors)

config_option = click.option(
    "-c", "--config", "config_path", type=click.Path(dir_okay=False),
    help=f"YAML config file; without it: SQLite and snapshots under ./{DEFAULT_DATA_DIR}.",
)


def _load(config_path: str | None) -> MonitorConfig:
    return load_config(config_path) if config_path else default_config()


@click.group("db")
def db() -> None:
    """Database schema and moving an installation between databases."""


@db.command("upgrade")
@config_option
@db_errors
def upgrade(config_path: str | None) -> None:
    """Migrate the config's database to the newest schema (back it up first)."""
    from monitor.store import create_engine_for
    from monitor.store.db import safe_url
    from monitor.store.schema import upgrade_schema

    config = _load(config_path)
    engine = create_engine_for(config.database)
    try:
        before, after = upgrade_schema(engine)
    finally:
        engine.dispose()
    shown = safe_url(config.database)
    if before == after:
        click.echo(f"{shown}: already at revision {after}")
    else:
        click.echo(f"{shown}: upgraded from {before or 'an unversioned schema'} to revision {after}")


@db.command("status")
@config_option
@db_errors
def status(config_path: str | None) -> None:
    """Print the database's schema revision and the newest one; exit 1 when it needs `db upgrade`."""
    from monitor.cli_errors import EXIT_FAILURE
    from monitor.store import create_engine_for
    from monitor.store.db import safe_url
    from monitor.store.schema import schema_status

    config = _load(config_path)
    engine = create_engine_for(config.database)
    try:
        state = schema_status(engine)
    finally:
        engine.dispose()
    shown = safe_url(config.database)
    if state.up_to_date:
        click.echo(f"{shown}: at revision {state.head} (newest)")
    elif state.fresh:
        click.echo(f"{shown}: empty; its tables are created on first use")
    else:
        click.echo(f"{shown}: at {state.current or 'an unversioned schema'}, newest is {state.head}; "
                   "run `monitor db upgrade`")
        raise SystemExit(EXIT_FAILURE)


@db.command("copy")
@click.option("--from", "source_url", required=True, metavar="URL", help="Database to copy (e.g. sqlite:///...).")
@click.option("--to", "target_url", required=True, metavar="URL",
              help="Empty database to copy into (e.g. postgresql+psycopg://user@host:5432/db).")
@click.option("--batch", type=click.IntRange(1, 100_000), default=2000, show_default=True, help="Rows per insert.")
@db_errors
def copy(source_url: str, target_url: str, batch: int) -> None:
    """Copy every row (reviews, users, rollout history, counts, alerts) into an empty database."""
    from monitor.store import StoreError, create_engine_for
    from monitor.store.copy import copy_database
    from monitor.store.db import safe_url

    if source_url == target_url:
        raise click.BadParameter("--from and --to are the same database", param_hint="--to")
    source = create_engine_for(source_url)
    try:
        target = create_engine_for(target_url)
    except StoreError:
        source.dispose()
        raise
    try:
        copied = copy_database(source, target, batch=batch,
                               progress=lambda table, rows: click.echo(f"  {table}: {rows} rows", err=True))
    finally:
        source.dispose()
        target.dispose()
    click.echo(f"copied {sum(copied.values())} rows in {len(copied)} tables from {safe_url(source_url)} "
               f"to {safe_url(target_url)} ({copied.get('review_items', 0)} review items, "
               f"{copied.get('review_decisions', 0)} decisions)")


COMMANDS = [db]
