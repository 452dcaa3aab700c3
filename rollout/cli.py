"""The `rollout` command: status, promote, rollback, history, window, evaluate.

Each command loads the config (``-c``, or the same defaults as `monitor`), opens the
store's database, does one thing through :mod:`rollout.promote` / :mod:`rollout.status`
and prints it. Errors a user can hit print one line on stderr and exit 2 (bad usage or
config: an unknown site, a bad cron expression, a missing reason) or 1 (runtime: gates
not passed, nothing to promote to, the database failed); `-v` adds tracebacks.
"""

from __future__ import annotations

import getpass
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from monitor.cli_errors import EXIT_FAILURE, one_line_errors
from rollout.gates import GateReport, Verdict

log = logging.getLogger("rollout")
VERDICT_STYLE = {Verdict.PASS.value: "green", Verdict.FAIL.value: "bold red", Verdict.INSUFFICIENT.value: "yellow"}


def _usage_errors() -> tuple[type[BaseException], ...]:
    from monitor.config import ConfigError
    from rollout.promote import RolloutUsageError

    return (ConfigError, RolloutUsageError)


def _runtime_errors() -> tuple[type[BaseException], ...]:
    from monitor.store import StoreError
    from rollout.promote import RolloutError

    return (RolloutError, StoreError)


user_errors = one_line_errors(usage=_usage_errors, failure=_runtime_errors)


def _out() -> Console:
    # Piped output (scripts, logs) gets wide lines instead of 80-column wrapping.
    width = None if sys.stdout.isatty() else 200
    return Console(highlight=False, soft_wrap=False, width=width)


def _default_actor() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers; the audit log still needs one
        return "unknown"


class _Env:
    """The loaded config, the engine and the rollout context of one command."""

    def __init__(self, config_path: str | None) -> None:
        from monitor.config import default_config, load_config
        from monitor.store import create_engine_for, init_schema
        from rollout.promote import RolloutContext
        from rollout.store import init_rollout_schema

        self.config = load_config(config_path) if config_path else default_config()
        self.engine = create_engine_for(self.config.database)
        try:
            init_schema(self.engine)
            init_rollout_schema(self.engine)
        except BaseException:
            self.engine.dispose()
            raise
        from monitor.store.observe import drift_flag_provider

        # The drift gate and `rollout status` show the drift detector's open flags.
        self.ctx = RolloutContext.from_config(self.config, drift_flags=drift_flag_provider(self.engine))

    @contextmanager
    def session(self) -> Iterator[Any]:
        from monitor.store import session_scope

        with session_scope(self.engine) as session:
            yield session

    def close(self) -> None:
        self.engine.dispose()


@contextmanager
def _env(config_path: str | None) -> Iterator[_Env]:
    env = _Env(config_path)
    try:
        yield env
    finally:
        env.close()


config_option = click.option(
    "-c", "--config", "config_path", type=click.Path(dir_okay=False),
    help="YAML config file (as for `monitor`); without it: SQLite under ./monitor-data.",
)
actor_option = click.option(
    "--by", "actor", default=None, metavar="NAME", help="Who makes the change, for the audit log (default: your login)."
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging with tracebacks.")
def main(verbose: bool) -> None:
    """Staged rollout of the bear model per site: manual, limited, expansion, full."""
    from monitor.logs import setup_logging

    setup_logging(verbose)
    if not verbose:
        # Each command prints its own result; the operations' INFO lines would repeat it.
        logging.getLogger("rollout.promote").setLevel(logging.WARNING)


# ---------------------------------------------------------------- printing


def _when(moment: datetime | None) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC") if moment else "-"


def _verdict_text(verdict: str) -> Text:
    return Text(verdict, style=VERDICT_STYLE.get(verdict, ""))


def gates_table(report: GateReport, *, title: str | None = None) -> Table:
    """A rich table: one row per gate with its verdict and numbers."""
    table = Table(title=title, title_justify="left", show_lines=False, expand=False)
    table.add_column("gate", no_wrap=True)
    table.add_column("verdict", no_wrap=True)
    table.add_column("numbers")
    for result in report.results:
        table.add_row(result.name, _verdict_text(result.verdict.value), result.detail)
    table.add_row(Text("overall", style="bold"), _verdict_text(report.verdict.value), "")
    return table


def _print_status(console: Console, status: Any, now: datetime) -> None:
    state = status.state
    days = (now - state.since).total_seconds() / 86400
    next_stage = status.next_stage.value if status.next_stage else "none (last stage)"
    title = (
        f"[bold]{status.site_id}[/bold]  stage [bold]{status.stage.value}[/bold] since {_when(state.since)} "
        f"({days:.1f} days)  model {state.model_id or '-'}  next: {next_stage}"
    )
    console.print(gates_table(status.report, title=title))
    if state.last_evaluated_at:
        console.print(
            f"  last evaluation {_when(state.last_evaluated_at)}: {state.last_verdict}, "
            f"{state.consecutive_failures} failing in a row"
        )
    if not status.windows:
        hint = "  no schedule windows" + (
            " - at limited the model alerts only inside windows: add one with `rollout window`"
            if status.stage.value == "limited" else ""
        )
        console.print(hint)
    for window in status.windows:
        w = window.window
        upcoming = (
            "open now" if window.open_now
            else f"next {_when(window.next_open[0])}" if window.next_open else "no more windows"
        )
        console.print(
            f"  window {w.id}: cron '{w.cron}' ({w.timezone}) for {w.duration_s / 3600:g}h until {_when(w.until)}"
            f" - {upcoming}"
        )


# ---------------------------------------------------------------- commands


@main.command()
@click.argument("site", required=False)
@config_option
@json_option
@user_errors
def status(site: str | None, config_path: str | None, as_json: bool) -> None:
    """Stage, since, model and every gate with its numbers, for SITE or all sites."""
    from rollout.status import all_statuses, site_status

    with _env(config_path) as env, env.session() as session:
        statuses = [site_status(site, session=session, ctx=env.ctx)] if site else all_statuses(
            session=session, ctx=env.ctx
        )
        if as_json:
            click.echo(json.dumps([s.to_dict() for s in statuses], indent=2))
            return
        console = _out()
        if not statuses:
            console.print("no sites: add sites to the config (-c)")
        for status_ in statuses:
            _print_status(console, status_, env.ctx.now())


@main.command()
@click.argument("site")
@click.option("--force", is_flag=True, help="Promote even though gates did not pass (needs --reason).")
@click.option("--reason", default=None, help="Why; stored in the audit log (required with --force).")
@actor_option
@config_option
@user_errors
def promote(site: str, force: bool, reason: str | None, actor: str | None, config_path: str | None) -> None:
    """Move SITE one stage up when every gate passes."""
    from rollout.promote import GatesNotPassed, RolloutUsageError, promote as do_promote

    if force and not (reason or "").strip():
        raise RolloutUsageError("--force needs --reason TEXT: say why the gates are overridden")
    with _env(config_path) as env, env.session() as session:
        try:
            transition = do_promote(
                site, session=session, ctx=env.ctx, actor=actor or _default_actor(), force=force, reason=reason
            )
        except GatesNotPassed as refused:
            _out().print(gates_table(refused.report, title=f"[bold]{site}[/bold] gates"))
            raise
    forced = " (forced: gates did not pass)" if transition.forced else ""
    click.echo(f"{site}: {transition.from_stage.value} -> {transition.to_stage.value}{forced}")


@main.command()
@click.argument("site")
@click.option("--reason", required=True, help="Why; stored in the audit log.")
@actor_option
@config_option
@user_errors
def rollback(site: str, reason: str, actor: str | None, config_path: str | None) -> None:
    """Move SITE one stage down."""
    from rollout.promote import rollback as do_rollback

    with _env(config_path) as env, env.session() as session:
        transition = do_rollback(site, session=session, ctx=env.ctx, actor=actor or _default_actor(), reason=reason)
    click.echo(f"{site}: {transition.from_stage.value} -> {transition.to_stage.value}")


@main.command()
@click.argument("site")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000), help="Newest N events.")
@config_option
@json_option
@user_errors
def history(site: str, limit: int, config_path: str | None, as_json: bool) -> None:
    """SITE's audit log, newest first: who, when, from, to, model, evidence, reason."""
    from rollout.status import site_history

    with _env(config_path) as env, env.session() as session:
        events = site_history(site, session=session, ctx=env.ctx, limit=limit)
    if as_json:
        click.echo(json.dumps([e.model_dump(mode="json") for e in events], indent=2))
        return
    console = _out()
    if not events:
        console.print(f"{site}: no rollout events yet")
        return
    table = Table(title=f"[bold]{site}[/bold] rollout history", title_justify="left")
    for name in ("when", "who", "action", "from -> to", "model", "evidence", "reason"):
        table.add_column(name, no_wrap=name in ("when", "action"))
    for event in events:
        evidence = event.evidence or {}
        if "gates" in evidence:
            not_passed = [g["name"] for g in evidence["gates"] if g["verdict"] != "PASS"]
            summary = f"gates {evidence.get('verdict')}" + (f" ({', '.join(not_passed)})" if not_passed else "")
        elif "cron" in evidence:
            summary = f"window {evidence.get('window_id')}: '{evidence['cron']}' until {evidence.get('until')}"
        else:
            summary = "-"
        action = event.action + (" (forced)" if event.forced else "")
        table.add_row(
            _when(event.at), event.actor, action, f"{event.from_stage} -> {event.to_stage}",
            event.model_id or "-", summary, event.reason or "-",
        )
    console.print(table)


def _duration(_ctx: click.Context, _param: click.Parameter, value: str | None) -> timedelta | None:
    if value is None:
        return None
    from monitor.config import parse_duration

    try:
        return timedelta(seconds=parse_duration(value))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@main.command()
@click.argument("site")
@click.option("--cron", "cron", default=None, metavar="EXPR", help="Window starts, five-field cron: '0 */4 * * *'.")
@click.option("--until", "until", default=None, metavar="DATE", help="Last day (YYYY-MM-DD, inclusive) or a datetime.")
@click.option("--duration", default=None, callback=_duration, help="How long each window stays open [default: 1h].")
@click.option("--timezone", "tz", default=None, help="IANA time zone of the cron expression [default: rollout.timezone].")
@click.option("--remove", "remove_id", type=int, default=None, metavar="ID", help="Remove window ID instead.")
@click.option("--reason", default=None, help="Note for the audit log.")
@actor_option
@config_option
@user_errors
def window(
    site: str,
    cron: str | None,
    until: str | None,
    duration: timedelta | None,
    tz: str | None,
    remove_id: int | None,
    reason: str | None,
    actor: str | None,
    config_path: str | None,
) -> None:
    """Add a limited-stage schedule window to SITE (or --remove one)."""
    from rollout.promote import RolloutUsageError, add_window, remove_window
    from rollout.schedule import parse_until

    if remove_id is not None:
        if cron or until:
            raise RolloutUsageError("give either --remove ID or --cron with --until, not both")
        with _env(config_path) as env, env.session() as session:
            env.ctx.check_site(site)
            removed = remove_window(remove_id, session=session, ctx=env.ctx, actor=actor or _default_actor(), site_id=site)
        click.echo(f"{site}: window {removed.id} removed")
        return
    if not cron or not until:
        raise RolloutUsageError("a window needs --cron EXPR and --until DATE (or --remove ID)")
    with _env(config_path) as env:
        zone = tz or env.ctx.config.timezone
        try:
            end = parse_until(until, zone)
        except ValueError as exc:  # an unknown zone or a bad date: both are bad usage
            raise RolloutUsageError(str(exc)) from None
        with env.session() as session:
            added = add_window(
                site, session=session, ctx=env.ctx, actor=actor or _default_actor(), cron=cron, until=end,
                duration=duration, tz=zone, reason=reason,
            )
    click.echo(
        f"{site}: window {added.id} added: '{added.cron}' ({added.timezone}) for {added.duration_s / 3600:g}h "
        f"until {_when(added.until)}"
    )


@main.command()
@click.argument("site", required=False)
@config_option
@user_errors
def evaluate(site: str | None, config_path: str | None) -> None:
    """Evaluate gates now, count failures and roll back automatically when due.

    `monitor run` does this every rollout.evaluation_interval; this runs it once (cron).
    Exits 1 when any site could not be evaluated.
    """
    from rollout.promote import evaluate_all

    with _env(config_path) as env:
        if site:
            env.ctx.check_site(site)
        sites = [site] if site else sorted(env.ctx.sites or ())
        results = evaluate_all(sites, engine=env.engine, ctx=env.ctx)
    failed = False
    for site_id, result in results.items():
        if isinstance(result, Exception):
            failed = True
            click.echo(f"{site_id}: evaluation failed: {result}", err=True)
            continue
        line = f"{site_id}: {result.report.stage.value}, gates {result.report.verdict.value}"
        if result.rolled_back is not None:
            line += f"; rolled back to {result.rolled_back.to_stage.value}"
        elif result.consecutive_failures:
            line += f" ({result.consecutive_failures} failing in a row)"
        click.echo(line)
    if failed:
        sys.exit(EXIT_FAILURE)


if __name__ == "__main__":  # python -m rollout.cli, where the console script is not installed
    main()
