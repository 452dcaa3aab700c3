"""The `monitor` command: run, scan, check-config, queue.

Each command parses its options, builds what it needs through monitor.app and prints
results. Errors a user can hit print one line on stderr and exit 2 (bad usage or config)
or 1 (runtime failure); `-v` adds tracebacks to the log.
"""

from __future__ import annotations

import json
import logging
import re
import signal
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from monitor.config import (
    DEFAULT_DATA_DIR,
    CameraConfig,
    ConfigError,
    MonitorConfig,
    SiteConfig,
    default_config,
    load_config,
    parse_duration,
)
from monitor.cli_errors import EXIT_FAILURE, EXIT_USAGE, fail as _fail, one_line_errors
from monitor.logs import setup_logging

log = logging.getLogger("monitor")
console = Console(stderr=True)
out = Console()

SCAN_SITE = "scan"
DEMO_CAMERA = "demo"


def _usage_errors() -> tuple[type[BaseException], ...]:
    from monitor.model.bundle import ModelUsageError

    return (ConfigError, ModelUsageError)


def _runtime_errors() -> tuple[type[BaseException], ...]:
    from monitor.model.base import ModelError
    from monitor.sources.base import SourceError
    from monitor.store import StoreError
    from monitor.web.server import WebServerError

    return (ModelError, SourceError, StoreError, WebServerError)


user_errors = one_line_errors(usage=_usage_errors, failure=_runtime_errors)


def _load(config_path: str | None) -> MonitorConfig:
    return load_config(config_path) if config_path else default_config()


config_option = click.option(
    "-c", "--config", "config_path", type=click.Path(dir_okay=False),
    help=f"YAML config file; without it: SQLite and snapshots under ./{DEFAULT_DATA_DIR}.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging with tracebacks.")
def main(verbose: bool) -> None:
    """Watch camera streams for bears with an image classifier and a review queue."""
    setup_logging(verbose)


@main.command("check-config")
@click.argument("file", type=click.Path(dir_okay=False))
@user_errors
def check_config(file: str) -> None:
    """Validate a config file; exit 2 with the field and the fix when it is wrong."""
    config = load_config(file)
    cameras = config.cameras()
    enabled = sum(1 for _, camera in cameras if camera.enabled)
    click.echo(f"{file}: ok ({len(config.sites)} site(s), {len(cameras)} camera(s), {enabled} enabled)")


VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm", ".ts", ".mts", ".mpg", ".mpeg", ".flv"})


def _expand_scan_paths(paths: tuple[str, ...]) -> list[Path]:
    """Files stay as they are; a folder becomes its video files plus itself if it holds stills."""
    from monitor.sources.stills import IMAGE_SUFFIXES

    expanded: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            expanded.append(path)
            continue
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        videos = [p for p in files if p.suffix.lower() in VIDEO_SUFFIXES]
        expanded.extend(videos)
        if not videos or any(p.suffix.lower() in IMAGE_SUFFIXES for p in files):
            expanded.append(path)  # a card dump of stills (or an empty folder, reported as such)
    return expanded


def _camera_id_for(path: Path, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", path.stem or path.name).strip("-.")[:48] or "source"
    candidate, n = base, 2
    while candidate in taken:
        candidate, n = f"{base}-{n}", n + 1
    taken.add(candidate)
    return candidate


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--every", default="2s", show_default=True, help="Take a still every this long of media time.")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@user_errors
def scan(paths: tuple[str, ...], every: str, config_path: str | None, as_json: bool) -> None:
    """Classify video files and folders (their video files and stills) as fast as possible."""
    from monitor.app import build_core, scan_sources

    try:
        interval = parse_duration(every)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--every") from None
    for raw in paths:
        if not Path(raw).exists():
            _fail(f"{raw}: no such file or folder; check the path", EXIT_USAGE)
    config = _load(config_path)
    taken = {camera.id for _, camera in config.cameras()}
    cameras = [CameraConfig(id=_camera_id_for(p, taken), path=str(p), every=interval)
               for p in _expand_scan_paths(paths)]
    config = config.model_copy(update={"sites": [*config.sites, SiteConfig(id=SCAN_SITE, cameras=cameras)]})
    config = MonitorConfig.model_validate(config.model_dump())

    tally: dict[str, Counter] = defaultdict(Counter)
    lock = threading.Lock()

    def on_outcomes(outcomes) -> None:
        with lock:
            for o in outcomes:
                t = tally[o.frame.camera_id]
                t["classified"] += 1
                t["positives"] += o.route.positive
                t["queued"] += o.route.queued
                t["label:" + o.prediction.label] += 1

    core = build_core(config, on_outcomes=on_outcomes)
    site = config.sites[-1]
    started = time.perf_counter()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("samples"), TimeElapsedColumn(), console=console, transient=as_json) as progress:
        task = progress.add_task("scanning", total=None)

        def on_sample(frame) -> None:
            progress.update(task, advance=1, description=f"{frame.camera_id} @ {frame.media_ts or 0:7.1f}s")

        results = scan_sources(core, [(site, camera) for camera in cameras], on_sample=on_sample)
    wall = time.perf_counter() - started
    core.close()
    rows = []
    for result in results:
        t = tally.get(result.camera_id, Counter())
        labels = {k.removeprefix("label:"): v for k, v in t.items() if k.startswith("label:")}
        rows.append({
            "source": result.origin, "camera": result.camera_id, "samples": result.samples,
            "classified": t["classified"], "positives": t["positives"], "queued": t["queued"],
            "labels": dict(sorted(labels.items(), key=lambda kv: -kv[1])),
            "media_seconds": round(result.media_seconds, 2), "error": result.error,
        })
    if as_json:
        click.echo(json.dumps({"sources": rows, "wall_seconds": round(wall, 2)}, indent=2))
    else:
        _print_scan_table(rows, wall)
    if all(r["error"] and r["samples"] == 0 for r in rows):
        sys.exit(EXIT_FAILURE)


def _print_scan_table(rows: list[dict], wall: float) -> None:
    table = Table(title=f"scan summary ({wall:.1f} s wall)")
    for column in ("source", "samples", "positives", "queued", "labels", "video s", "error"):
        table.add_column(column, overflow="fold")
    for r in rows:
        labels = ", ".join(f"{k} {v}" for k, v in list(r["labels"].items())[:4])
        table.add_row(Path(r["source"]).name or r["source"], str(r["samples"]), str(r["positives"]), str(r["queued"]), labels,
                      f"{r['media_seconds']:.1f}", r["error"] or "")
    out.print(table)
    media = sum(r["media_seconds"] for r in rows)
    if media and wall:
        out.print(f"{media:.1f} s of video in {wall:.1f} s: {media / wall:.1f}x real time")


def _demo_config() -> MonitorConfig:
    """The default config plus a generated clip replayed in a loop like a camera."""
    from monitor.sources.synthetic import make_demo_clip

    config = default_config()
    clip = DEFAULT_DATA_DIR / "demo" / "demo.mp4"
    if not clip.exists():
        clip.parent.mkdir(parents=True, exist_ok=True)
        click.echo(f"generating a demo clip at {clip} (no camera needed)", err=True)
        make_demo_clip(clip)
    demo = CameraConfig(id=DEMO_CAMERA, name="Demo camera (generated clip)", path=str(clip),
                        every=2.0, replay=True, loop=True)
    return config.model_copy(update={"sites": [SiteConfig(id="demo", name="Demo site", cameras=[demo])]})


@main.command()
@config_option
@click.option("--duration", type=str, default=None, help="Stop after this long (e.g. 30s); default: until signalled.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Serve /metrics on this port instead of the config's (0 picks a free one).")
@click.option("--worker", "worker_name", default=None, metavar="NAME",
              help="Share the cameras with other workers on the same database through leases; "
                   "NAME must be unique among them.")
@user_errors
def run(config_path: str | None, duration: str | None, metrics_port: int | None, worker_name: str | None) -> None:
    """Sample every enabled camera on its interval until SIGTERM or Ctrl-C."""
    from monitor.app import LiveMonitor, build_core

    try:
        limit = parse_duration(duration) if duration else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--duration") from None
    config = _load(config_path) if config_path else _demo_config()
    if metrics_port is not None:
        config = config.model_copy(update={"metrics": config.metrics.model_copy(update={"port": metrics_port})})
    if not any(camera.enabled for _, camera in config.cameras()):
        _fail("no enabled cameras in the config; add one under sites[].cameras", EXIT_USAGE)
    if worker_name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", worker_name):
        raise click.BadParameter("use letters, digits, '_', '-' or '.' (at most 64 characters)",
                                 param_hint="--worker")
    core = build_core(config, live=True, worker=worker_name)
    try:
        monitor = LiveMonitor(core, worker_name=worker_name)
    except BaseException:
        core.close()
        raise
    stop = threading.Event()

    def request_stop(signum, _frame) -> None:
        log.info("%s received: finishing what was sampled", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    monitor.start()
    try:
        stop.wait(limit)
    finally:
        monitor.stop()
    log.info("stopped cleanly")


@main.group()
def queue() -> None:
    """Look at the review queue."""


@queue.command("list")
@config_option
@click.option("--status", type=click.Choice(["pending", "approved", "rejected", "relabelled"]), default=None)
@click.option("--camera", default=None, help="Only this camera id.")
@click.option("--limit", type=click.IntRange(1, 10000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@user_errors
def queue_list(config_path: str | None, status: str | None, camera: str | None, limit: int, as_json: bool) -> None:
    """List review items, newest first."""
    from monitor.store import count_items, create_engine_for, init_schema, list_items, session_scope

    config = _load(config_path)
    engine = create_engine_for(config.database)
    init_schema(engine)
    with session_scope(engine) as session:
        items = list_items(session=session, status=status, camera_id=camera, limit=limit)
        total = count_items(session=session, status=status)
    engine.dispose()
    if as_json:
        for item in items:
            click.echo(json.dumps(_item_json(item)))
        return
    table = Table(title=f"review queue: {len(items)} of {total}" + (f" {status}" if status else ""))
    for column in ("id", "captured (UTC)", "site", "camera", "label", "conf", "why", "status", "snapshot"):
        table.add_column(column)
    for item in items:
        table.add_row(str(item.id), item.captured_at.strftime("%Y-%m-%d %H:%M:%S"), item.site_id, item.camera_id,
                      item.label, f"{item.confidence:.2f}", item.reason, item.status, item.snapshot)
    out.print(table)


def _item_json(item) -> dict:
    return {
        "id": item.id, "site": item.site_id, "camera": item.camera_id,
        "captured_at": item.captured_at.isoformat(), "media_ts": item.media_ts,
        "label": item.label, "confidence": round(item.confidence, 4),
        "probabilities": item.probabilities, "model_id": item.model_id,
        "reason": item.reason, "status": item.status, "snapshot": item.snapshot,
    }


from monitor.cli_model import COMMANDS as _MODEL_COMMANDS  # noqa: E402  (train, classify, model)
for _command in _MODEL_COMMANDS:
    main.add_command(_command)


# Review UI, users, API tokens, dataset export and retention (serve, user, token, dataset, prune).
from monitor.cli_review import COMMANDS as _REVIEW_COMMANDS  # noqa: E402
for _command in _REVIEW_COMMANDS:
    main.add_command(_command)


# Schema upgrades and moving an installation to another database (db upgrade, status, copy).
from monitor.cli_db import COMMANDS as _DB_COMMANDS  # noqa: E402
for _command in _DB_COMMANDS:
    main.add_command(_command)


# Dead alert notifications: list, requeue, discard (notify dead, retry, discard).
from monitor.cli_notify import COMMANDS as _NOTIFY_COMMANDS  # noqa: E402
for _command in _NOTIFY_COMMANDS:
    main.add_command(_command)


if __name__ == "__main__":
    main()
