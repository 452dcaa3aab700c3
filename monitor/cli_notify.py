"""`monitor notify`: see alert notifications the dispatcher gave up on, and requeue or discard them.

Responsible for the operator's side of dead letters. The dispatcher marks an outbox
entry ``dead`` when its retry policy gives up (``notify.retry``; see
:mod:`monitor.notify`); nothing is lost: ``monitor notify dead`` lists what is dead and
why, ``monitor notify retry --target T`` makes it pending again (delivered in order
per camera, with the same idempotency key, by the running workers), and ``monitor
notify discard --target T`` gives up on it for good. Registered on the `monitor` group
at the end of :mod:`monitor.cli`, with the same error contract as every command: one
line on stderr, exit 2 for bad usage or config, 1 for a runtime failure.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

import click

from monitor.cli_errors import EXIT_USAGE, fail, one_line_errors
from monitor.config import DEFAULT_DATA_DIR, ConfigError, MonitorConfig, default_config, load_config


def _usage_errors() -> tuple[type[BaseException], ...]:
    return (ConfigError,)


def _runtime_errors() -> tuple[type[BaseException], ...]:
    from monitor.store import StoreError

    return (StoreError,)


notify_errors = one_line_errors(usage=_usage_errors, failure=_runtime_errors)

config_option = click.option(
    "-c", "--config", "config_path", type=click.Path(dir_okay=False),
    help=f"YAML config file; without it: SQLite and snapshots under ./{DEFAULT_DATA_DIR}.",
)
camera_option = click.option("--camera", default=None, help="Only this camera's alerts.")
ids_option = click.option("--id", "ids", type=int, multiple=True, help="Only this outbox entry (repeatable).")


def _load(config_path: str | None) -> MonitorConfig:
    return load_config(config_path) if config_path else default_config()


def _engine(config: MonitorConfig):
    from monitor.store import create_engine_for, init_schema

    engine = create_engine_for(config.database)
    try:
        init_schema(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine


def _entry_json(entry) -> dict:
    payload = entry.payload or {}
    return {
        "id": entry.id, "target": entry.target, "camera": entry.camera_id, "site": payload.get("site"),
        "key": payload.get("key"), "captured_at": payload.get("captured_at"), "label": payload.get("label"),
        "attempts": entry.attempts, "created_at": entry.created_at.isoformat(),
        "dead_at": entry.dead_at.isoformat() if entry.dead_at else None, "last_error": entry.last_error,
    }


@click.group("notify")
def notify() -> None:
    """Alert notifications the dispatcher gave up on (dead letters): list, requeue, discard."""


@notify.command("dead")
@config_option
@click.option("--target", default=None, help="Only this notify target.")
@camera_option
@click.option("--limit", type=click.IntRange(1, 100_000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@notify_errors
def dead(config_path: str | None, target: str | None, camera: str | None, limit: int, as_json: bool) -> None:
    """List dead alerts, oldest first, with why their last attempt failed."""
    from rich.console import Console
    from rich.table import Table

    from monitor.store import session_scope
    from monitor.store.outbox import dead_entries, status_counts

    config = _load(config_path)
    engine = _engine(config)
    try:
        with session_scope(engine) as session:
            entries = dead_entries(session=session, target=target, camera=camera, limit=limit)
            counts = status_counts(session=session, statuses=("dead",))
    finally:
        engine.dispose()
    if as_json:
        for entry in entries:
            click.echo(json.dumps(_entry_json(entry)))
        return
    if not entries:
        click.echo("no dead alerts" + (f" to {target}" if target else "") + (f" of camera {camera}" if camera else ""))
        return
    table = Table(title="dead alerts (not delivered; nothing else is held up by them)")
    for column in ("id", "target", "camera", "captured (UTC)", "label", "tries", "dead since (UTC)", "last error"):
        table.add_column(column, overflow="fold")
    for entry in entries:
        row = _entry_json(entry)
        captured = (row["captured_at"] or "")[:19].replace("T", " ")
        table.add_row(str(entry.id), entry.target, entry.camera_id, captured, row["label"] or "",
                      str(entry.attempts), entry.dead_at.strftime("%Y-%m-%d %H:%M:%S") if entry.dead_at else "",
                      entry.last_error or "")
    Console(width=200).print(table)
    for (name, _status), count in sorted(counts.items()):
        if target in (None, name):
            click.echo(f"{name}: {count} dead; `monitor notify retry --target {name}` requeues them, "
                       f"`monitor notify discard --target {name}` gives up on them")


def _configured_target(config: MonitorConfig, target: str) -> None:
    if target not in config.notify.targets:
        known = ", ".join(sorted(config.notify.targets)) or "none"
        fail(f"target {target!r} is not under notify.targets of this config ({known}); requeue to a configured "
             "target (pass the workers' config with -c), or discard its dead alerts", EXIT_USAGE)


@notify.command("retry")
@config_option
@click.option("--target", required=True, help="The notify target whose dead alerts are requeued.")
@camera_option
@ids_option
@notify_errors
def retry(config_path: str | None, target: str, camera: str | None, ids: tuple[int, ...]) -> None:
    """Requeue dead alerts: the workers deliver them again, in order per camera, with their keys."""
    from monitor.store import session_scope
    from monitor.store.outbox import requeue_dead

    config = _load(config_path)
    _configured_target(config, target)
    engine = _engine(config)
    try:
        with session_scope(engine) as session:
            count = requeue_dead(session=session, target=target, camera=camera, ids=ids or None,
                                 now=datetime.now(timezone.utc))
    finally:
        engine.dispose()
    if count == 0:
        click.echo(f"no dead alerts to {target} to requeue")
    else:
        click.echo(f"requeued {count} dead alert(s) to {target}: delivered again in order per camera, "
                   "with their original idempotency keys")


@notify.command("discard")
@config_option
@click.option("--target", required=True, help="The notify target whose dead alerts are given up on.")
@camera_option
@ids_option
@notify_errors
def discard(config_path: str | None, target: str, camera: str | None, ids: tuple[int, ...]) -> None:
    """Give up on dead alerts for good; they are kept as discarded until a prune removes them."""
    from monitor.store import session_scope
    from monitor.store.outbox import discard_dead

    config = _load(config_path)
    engine = _engine(config)
    try:
        with session_scope(engine) as session:
            count = discard_dead(session=session, target=target, camera=camera, ids=ids or None,
                                 now=datetime.now(timezone.utc))
    finally:
        engine.dispose()
    click.echo(f"discarded {count} dead alert(s) to {target}" if count else f"no dead alerts to {target} to discard")


COMMANDS = [notify]
