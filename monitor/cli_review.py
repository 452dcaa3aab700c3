"""`monitor serve`, `user`, `token`, `dataset export` and `prune`: the review side of the CLI.

Responsible for the commands around the review queue. They are registered on the
`monitor` group at the end of :mod:`monitor.cli` (``COMMANDS``). This module does not
import :mod:`monitor.cli` (which imports it), so it carries its own small error wrapper
with the same contract: one line on stderr, exit 2 for bad usage or config, 1 for a
runtime failure. Passwords and tokens are never logged; a new token is printed once.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from datetime import timedelta
from pathlib import Path

import click

from monitor.cli_errors import EXIT_USAGE, one_line_errors
from monitor.cli_errors import fail as _fail
from monitor.config import DEFAULT_DATA_DIR, ConfigError, MonitorConfig, default_config, load_config, parse_duration

log = logging.getLogger("monitor")


def _usage_errors() -> tuple[type[BaseException], ...]:
    # Imported when a command runs, not when `monitor` starts: the web server pulls in
    # FastAPI and uvicorn, which `monitor scan` never needs.
    from monitor.auth import PasswordPolicyError
    from monitor.dataset import ExportError
    from monitor.store.users import UnknownUserError, UserExistsError

    return (ConfigError, PasswordPolicyError, UserExistsError, UnknownUserError, ExportError)


def _runtime_errors() -> tuple[type[BaseException], ...]:
    from monitor.model.base import ModelError
    from monitor.store import StoreError
    from monitor.web.server import WebServerError

    return (ModelError, StoreError, WebServerError)


review_errors = one_line_errors(usage=_usage_errors, failure=_runtime_errors)


config_option = click.option(
    "-c", "--config", "config_path", type=click.Path(dir_okay=False),
    help=f"YAML config file; without it: SQLite and snapshots under ./{DEFAULT_DATA_DIR}.",
)


def _load(config_path: str | None) -> MonitorConfig:
    return load_config(config_path) if config_path else default_config()


def _open_store(config: MonitorConfig):
    """The engine with every table present and up to date."""
    from monitor.store import create_engine_for, init_schema
    from rollout.store import init_rollout_schema

    engine = create_engine_for(config.database)
    init_schema(engine)
    init_rollout_schema(engine)
    return engine


def _read_password(password_stdin: bool) -> str:
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            _fail("no password on standard input; pipe one line, e.g. `printf '%s\\n' \"$PW\" | ...`", EXIT_USAGE)
        return password
    return click.prompt("Password", hide_input=True, confirmation_prompt=True)


# ---------------------------------------------------------------- serve


@click.command()
@config_option
@click.option("--host", default=None, help="Listen address (default: the config's metrics.host).")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="Listen port (default: the config's metrics.port; 0 picks a free one).")
@click.option("--no-model", is_flag=True, help="Do not load the model (the classify page is then disabled).")
@review_errors
def serve(config_path: str | None, host: str | None, port: int | None, no_model: bool) -> None:
    """Serve the review UI and API without sampling cameras (Ctrl-C stops it)."""
    from prometheus_client import CollectorRegistry

    from monitor.model import ModelError, load_model
    from monitor.store import SnapshotStore
    from monitor.web import WebServer, create_web_app

    config = _load(config_path)
    engine = _open_store(config)
    classifier = None
    if not no_model:
        try:
            classifier = load_model(config.model, cache_dir=Path(config.model_cache))
        except ModelError as exc:
            log.warning("classify page disabled: %s", exc)
    app = create_web_app(engine=engine, snapshots=SnapshotStore(Path(config.snapshots)),
                         registry=CollectorRegistry(), config=config, classifier=classifier)
    shown_host = host or config.metrics.host
    server = WebServer(app, host=shown_host, port=config.metrics.port if port is None else port)
    stop = threading.Event()

    def request_stop(signum, _frame) -> None:
        log.info("%s received: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        bound = server.start()
        log.info("review UI on http://%s:%d/", shown_host, bound)
        stop.wait()
    finally:
        server.stop()
        engine.dispose()
    log.info("stopped cleanly")


# ---------------------------------------------------------------- users


@click.group()
def user() -> None:
    """Manage reviewers who can sign in to the review UI."""


@user.command("add")
@click.argument("name")
@config_option
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of standard input.")
@review_errors
def user_add(name: str, config_path: str | None, password_stdin: bool) -> None:
    """Add reviewer NAME (asks for the password twice)."""
    from monitor.store import session_scope
    from monitor.store.users import check_user_name, create_user

    try:
        check_user_name(name)
    except ValueError as exc:
        _fail(str(exc), EXIT_USAGE)
    config = _load(config_path)
    engine = _open_store(config)
    password = _read_password(password_stdin)
    try:
        with session_scope(engine) as session:
            create_user(name, password, session=session)
    finally:
        engine.dispose()
    click.echo(f"user {name} added")


@user.command("passwd")
@click.argument("name")
@config_option
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of standard input.")
@review_errors
def user_passwd(name: str, config_path: str | None, password_stdin: bool) -> None:
    """Set a new password for NAME and sign out their browsers."""
    from monitor.store import session_scope
    from monitor.store.users import set_password

    engine = _open_store(_load(config_path))
    password = _read_password(password_stdin)
    try:
        with session_scope(engine) as session:
            set_password(name, password, session=session)
    finally:
        engine.dispose()
    click.echo(f"password of {name} changed")


@user.command("list")
@config_option
@review_errors
def user_list(config_path: str | None) -> None:
    """List reviewers."""
    from monitor.store import session_scope
    from monitor.store.users import list_users

    engine = _open_store(_load(config_path))
    try:
        with session_scope(engine) as session:
            users = list_users(session=session)
    finally:
        engine.dispose()
    for row in users:
        click.echo(f"{row.name}\t{'disabled' if row.disabled else 'active'}\tadded {row.created_at:%Y-%m-%d}")


# ---------------------------------------------------------------- API tokens


@click.group()
def token() -> None:
    """Manage API tokens for scripts (sent as 'Authorization: Bearer <token>')."""


@token.command("create")
@click.option("--user", "user_name", required=True, help="The reviewer the token acts as.")
@click.option("--name", default="", help="What the token is for.")
@config_option
@review_errors
def token_create(user_name: str, name: str, config_path: str | None) -> None:
    """Create a token and print it once (only its hash is stored)."""
    from monitor.store import session_scope
    from monitor.store.users import create_api_token

    engine = _open_store(_load(config_path))
    try:
        with session_scope(engine) as session:
            secret, row = create_api_token(user_name, name=name, session=session)
    finally:
        engine.dispose()
    click.echo(f"token {row.id} for {user_name} (shown once; store it safely):", err=True)
    click.echo(secret)


@token.command("list")
@config_option
@review_errors
def token_list(config_path: str | None) -> None:
    """List tokens (never their values)."""
    from monitor.store import session_scope
    from monitor.store.users import list_api_tokens

    engine = _open_store(_load(config_path))
    try:
        with session_scope(engine) as session:
            tokens = list_api_tokens(session=session)
    finally:
        engine.dispose()
    for row, owner in tokens:
        state = f"revoked {row.revoked_at:%Y-%m-%d}" if row.revoked_at else "active"
        click.echo(f"{row.id}\t{owner}\t{row.name}\t{state}\tcreated {row.created_at:%Y-%m-%d}")


@token.command("revoke")
@click.argument("token_id", type=int)
@config_option
@review_errors
def token_revoke(token_id: int, config_path: str | None) -> None:
    """Revoke token TOKEN_ID (see `monitor token list`)."""
    from monitor.store import session_scope
    from monitor.store.users import revoke_api_token

    engine = _open_store(_load(config_path))
    try:
        with session_scope(engine) as session:
            revoked = revoke_api_token(token_id, session=session)
    finally:
        engine.dispose()
    if not revoked:
        _fail(f"no active token {token_id}; see `monitor token list`", EXIT_USAGE)
    click.echo(f"token {token_id} revoked")


# ---------------------------------------------------------------- dataset export


@click.group()
def dataset() -> None:
    """Turn reviewed stills into training data."""


@dataset.command("export")
@click.argument("out_dir", type=click.Path(file_okay=False))
@config_option
@review_errors
def dataset_export(out_dir: str, config_path: str | None) -> None:
    """Write reviewed stills to OUT_DIR/<class>/ with a manifest; run again to add what is new."""
    from monitor.dataset import export_dataset
    from monitor.store import SnapshotStore, session_scope

    config = _load(config_path)
    engine = _open_store(config)
    try:
        with session_scope(engine) as session:
            report = export_dataset(Path(out_dir), session=session, snapshots=SnapshotStore(Path(config.snapshots)))
    finally:
        engine.dispose()
    classes = ", ".join(f"{name} {count}" for name, count in sorted(report.classes.items())) or "none yet"
    click.echo(f"{out_dir}: {report.added} added, {report.moved} moved, {report.removed} removed, "
               f"{report.unchanged} unchanged; classes: {classes}")
    for reason in report.skipped[:20]:
        click.echo(f"skipped {reason}", err=True)
    if len(report.skipped) > 20:
        click.echo(f"... and {len(report.skipped) - 20} more skipped", err=True)


# ---------------------------------------------------------------- retention


@click.command()
@click.option("--older-than", required=True,
              help="Delete items captured, and notifications delivered, longer ago than this (e.g. 30d, 12h).")
@click.option("--include-reviewed", is_flag=True, help="Also delete reviewed items and their decision history.")
@click.option("--samples-older-than", default="2d", show_default=True,
              help="Forget that a stream's still was recorded after this long (at least 1h); "
                   "folder and video-file cameras are never forgotten.")
@click.option("--dry-run", is_flag=True, help="Only count what would be deleted.")
@config_option
@review_errors
def prune(older_than: str, include_reviewed: bool, samples_older_than: str, dry_run: bool,
          config_path: str | None) -> None:
    """Delete old unreviewed negative samples and their snapshots, delivered notifications and
    old samples rows; hourly counts, pending and dead notifications stay."""
    from monitor.retention import MIN_SAMPLES_OLDER_THAN, prune_history
    from monitor.retention import prune as prune_items
    from monitor.store import SnapshotStore, session_scope

    ages = {}
    for option, value in (("--older-than", older_than), ("--samples-older-than", samples_older_than)):
        try:
            ages[option] = timedelta(seconds=parse_duration(value))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint=option) from None
    if ages["--samples-older-than"] < MIN_SAMPLES_OLDER_THAN:
        raise click.BadParameter("at least 1h: a worker may still retry recording newer stills, and their "
                                 "samples rows keep them from being recorded twice", param_hint="--samples-older-than")
    config = _load(config_path)
    engine = _open_store(config)
    try:
        with session_scope(engine) as session:
            history = prune_history(session=session, config=config, older_than=ages["--older-than"],
                                    samples_older_than=ages["--samples-older-than"], dry_run=dry_run)
            report = prune_items(session=session, snapshots=SnapshotStore(Path(config.snapshots)),
                                 older_than=ages["--older-than"], include_reviewed=include_reviewed, dry_run=dry_run)
    finally:
        engine.dispose()
    what = "reviewed and unreviewed" if include_reviewed else "unreviewed negative-sample"
    if dry_run:
        click.echo(f"would delete {report.items} {what} item(s) captured before {report.cutoff:%Y-%m-%d %H:%M} UTC")
    else:
        click.echo(f"deleted {report.items} {what} item(s) captured before {report.cutoff:%Y-%m-%d %H:%M} UTC "
                   f"and {report.snapshots} snapshot(s)"
                   + (f"; {report.missing_snapshots} snapshot(s) were already gone" if report.missing_snapshots else ""))
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb} {history.notifications} delivered or discarded notification(s) and {history.alerts} "
               f"alert(s) from before {history.cutoff:%Y-%m-%d %H:%M} UTC (pending and dead ones stay)")
    click.echo(f"{verb} {history.samples} samples row(s) of {len(history.sample_cameras)} stream camera(s) "
               f"from before {history.samples_cutoff:%Y-%m-%d %H:%M} UTC"
               + (f"; kept those of {len(history.kept_cameras)} folder or video-file camera(s), which are "
                  "what keeps their files' stills from being recorded twice" if history.kept_cameras else ""))


COMMANDS = (serve, user, token, dataset, prune)
