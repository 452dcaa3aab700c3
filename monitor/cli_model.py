"""The model commands of `monitor`: train, classify, and `model import` / `model info`.

Registered into :data:`monitor.cli.main` by monitor/cli.py. This module must not import
monitor.cli (cli.py imports it at its end). Errors a user can hit print one line and exit
2 (bad usage, data or config: ``ModelUsageError``, ``ConfigError``) or 1 (runtime failure:
``ModelError``); ``monitor -v`` adds tracebacks to the log.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from monitor.cli_errors import EXIT_FAILURE, EXIT_USAGE, fail as _fail, one_line_errors

log = logging.getLogger("monitor")
err = Console(stderr=True)
out = Console()

RUNTIME_CHOICES = ("auto", "onnx-cpu", "torch-cpu", "torch-cuda")


def _usage_errors() -> tuple[type[BaseException], ...]:
    from monitor.config import ConfigError
    from monitor.model.bundle import ModelUsageError

    return (ConfigError, ModelUsageError)


def _runtime_errors() -> tuple[type[BaseException], ...]:
    from monitor.model.base import ModelError

    return (ModelError,)


model_errors = one_line_errors(usage=_usage_errors, failure=_runtime_errors)


# --- monitor train ----------------------------------------------------------------------------


@click.command()
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option("--arch", default="efficientnet_lite0", show_default=True,
              help="timm architecture; efficientnet_lite0 has ImageNet weights installed locally, others download them.")
@click.option("--size", type=click.IntRange(32, 1024), default=224, show_default=True, help="Model input side in pixels.")
@click.option("--epochs", type=click.IntRange(1, 1000), default=4, show_default=True,
              help="Unfrozen epochs of fine_tune (after --freeze-epochs frozen ones).")
@click.option("--freeze-epochs", type=click.IntRange(0, 100), default=1, show_default=True,
              help="Epochs training only the new head first.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Bundle folder to write; default models/<DATA_DIR name>. A previous bundle there is replaced.")
@click.option("--valid-pct", type=click.FloatRange(0.01, 0.9), default=0.2, show_default=True,
              help="Share of the photos held out for validation.")
@click.option("--seed", type=int, default=42, show_default=True, help="Seeds the split, augmentation and head init.")
@click.option("--batch-size", type=click.IntRange(1, 1024), default=32, show_default=True)
@click.option("--lr", "base_lr", type=click.FloatRange(min=0, min_open=True), default=2e-3, show_default=True,
              help="fine_tune base learning rate.")
@click.option("--remove-corrupt", is_flag=True, help="Delete image files that do not decode (default: stop and list them).")
@click.option("--no-pretrained", is_flag=True, help="Train from random weights (for architectures whose weights cannot be downloaded).")
@model_errors
def train(data_dir: Path, arch: str, size: int, epochs: int, freeze_epochs: int, out_dir: Path | None, valid_pct: float,
          seed: int, batch_size: int, base_lr: float, remove_corrupt: bool, no_pretrained: bool) -> None:
    """Train a classifier on DATA_DIR (one sub-folder of photos per class) and write a model bundle.

    Verifies the images, fine-tunes with fastai, and writes model.onnx, bundle.json,
    metrics.json, confusion_matrix.png and top_losses.png into the bundle folder.
    """
    from monitor.model.train import TrainOptions
    from monitor.model.train import train as run_training

    options = TrainOptions(
        data_dir=data_dir, out=out_dir or Path("models") / (data_dir.resolve().name or "model"), arch=arch, size=size,
        epochs=epochs, freeze_epochs=freeze_epochs, valid_pct=valid_pct, seed=seed, batch_size=batch_size,
        pretrained=not no_pretrained, remove_corrupt=remove_corrupt, base_lr=base_lr,
    )
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), console=err, transient=True) as progress:
        result = run_training(options, progress=_TrainDisplay(progress, data_dir))
    metrics = result.metrics
    valid = metrics["valid_images"]
    out.print(f"{result.bundle.directory}  {result.bundle.model_id}", markup=False, highlight=False, soft_wrap=True)
    out.print(f"validation accuracy {metrics['accuracy']:.3f} ({round(metrics['accuracy'] * valid)}/{valid}), "
              f"error rate {metrics['error_rate']:.3f}, {result.seconds:.0f} s", soft_wrap=True)
    table = Table(title="per class (validation)")
    for column in ("label", "precision", "recall", "images"):
        table.add_column(column, justify="right" if column != "label" else "left")
    for label, row in metrics["per_class"].items():
        table.add_row(label, _fmt(row["precision"]), _fmt(row["recall"]), str(row["support"]))
    out.print(table)
    out.print("look at the worst mistakes in top_losses.png and confusion_matrix.png in the bundle folder", soft_wrap=True)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


class _TrainDisplay:
    """Turns training events into a progress bar and one printed line per epoch."""

    def __init__(self, progress: Progress, data_dir: Path) -> None:
        self.progress = progress
        self.data_dir = data_dir
        self.task: Any = None
        self.epoch_started = time.perf_counter()

    def _task(self, description: str, total: int | None) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(description, total=total, info="")

    def __call__(self, event: str, fields: dict[str, Any]) -> None:
        if event == "verify":
            if fields["done"] == 1:
                self._task("verifying images", fields["total"])
            self.progress.update(self.task, completed=fields["done"])
        elif event == "corrupt":
            action = "deleted" if fields["removed"] else "corrupt"
            err.print(f"{action}: {fields['path']} ({fields['why']})", markup=False, highlight=False, soft_wrap=True)
        elif event == "data":
            err.print(f"{fields['images']} images, {len(fields['labels'])} classes ({', '.join(fields['labels'])}); "
                      f"{fields['train']} train / {fields['valid']} valid; {fields['network']} "
                      f"(weights: {fields['weights']})", markup=False, highlight=False, soft_wrap=True)
        elif event == "fit":
            self._task(f"{fields['phase']} epochs", fields["batches"])
        elif event == "batch":
            self.progress.update(self.task, advance=1, info=f"loss {fields['loss']:.3f}")
        elif event == "epoch":
            acc = fields["accuracy"]
            err.print(f"{fields['phase']:8s} epoch {fields['epoch']}/{fields['epochs']}  "
                      f"train_loss {fields['train_loss']:.4f}  valid_loss {fields['valid_loss']:.4f}  "
                      f"accuracy {acc:.4f}  {fields['seconds']:.0f} s", markup=False, highlight=False, soft_wrap=True)
        elif event == "export":
            self._task({"interpretation": "interpreting", "onnx": "exporting ONNX"}.get(fields["step"], fields["step"]), None)


# --- monitor classify -------------------------------------------------------------------------


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--model", "model_ref", default=None,
              help="builtin:imagenet-bears or a model bundle folder; default: the config's model.")
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="YAML config: its model, model_cache and alert_labels (checked against the model's labels).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per image and line.")
@click.option("--runtime", type=click.Choice(RUNTIME_CHOICES), default=None,
              help="Where the model runs; default auto ($MONITOR_RUNTIME): the GPU if there is one, else ONNX Runtime.")
@click.option("--batch-size", type=click.IntRange(1, 256), default=16, show_default=True)
@model_errors
def classify(images: tuple[Path, ...], model_ref: str | None, config_path: str | None, as_json: bool,
             runtime: str | None, batch_size: int) -> None:
    """Print the label and probabilities for each IMAGE (files or folders of images).

    Exits 1 if any image could not be read (the others are still classified).
    """
    from monitor.config import default_config, load_config
    from monitor.model import load_model
    from monitor.model.classify import classify_files, expand_paths

    missing = [str(p) for p in images if not p.exists()]
    if missing:
        _fail(f"{missing[0]}: no such file or folder; check the path", EXIT_USAGE)
    config = load_config(config_path) if config_path else default_config()
    files = expand_paths(images)
    if not files:
        _fail(f"no image files in {', '.join(str(p) for p in images)}", EXIT_USAGE)
    model = load_model(model_ref or config.model, cache_dir=Path(config.model_cache), runtime=runtime,
                       alert_labels=config.alert_labels if config_path else None)
    results = classify_files(files, model, batch_size=batch_size)
    failed = 0
    for result in results:
        if result.error is not None:
            failed += 1
            click.echo(f"error: {result.error}", err=True)
            if as_json:
                click.echo(json.dumps(result.to_json()))
            continue
        if as_json:
            click.echo(json.dumps(result.to_json()))
        else:
            p = result.prediction
            ranked = sorted(p.probabilities.items(), key=lambda kv: -kv[1])
            probs = "  ".join(f"{label} {prob:.3f}" for label, prob in ranked[:4])
            click.echo(f"{result.path}\t{p.label}\t{p.confidence:.3f}\t{probs}")
    if not as_json:
        click.echo(f"{len(results) - failed} classified, {failed} failed ({model.model_id})", err=True)
    if failed:
        sys.exit(EXIT_FAILURE)


# --- monitor model ... -----------------------------------------------------------------------


@click.group()
def model() -> None:
    """Import and inspect model bundles."""


@model.command("import")
@click.argument("learner_pkl", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Bundle folder to write, e.g. models/NAME.")
@click.option("--trust", is_flag=True,
              help="Confirm the .pkl is trusted: loading a pickle runs any code it contains.")
@model_errors
def import_learner_cmd(learner_pkl: Path, out_dir: Path, trust: bool) -> None:
    """Convert a fastai learn.export() file (e.g. model.pkl) into a model bundle (no pickle inside)."""
    from monitor.model.train import import_learner

    bundle = import_learner(learner_pkl, out_dir, trust=trust)
    click.echo(f"{bundle.directory}: {bundle.model_id} ({bundle.architecture}, {len(bundle.labels)} labels: "
               f"{', '.join(bundle.labels)}; input {bundle.preprocess.size} px, {bundle.preprocess.resize})")


@model.command("info")
@click.argument("bundle_path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print bundle.json.")
@model_errors
def info(bundle_path: Path, as_json: bool) -> None:
    """Check a model bundle (sha256 included) and describe it."""
    from monitor.model.bundle import read_bundle

    bundle = read_bundle(bundle_path)
    if as_json:
        click.echo(json.dumps(bundle.meta, indent=2))
        return
    meta = bundle.meta
    click.echo(f"{bundle.directory}: {bundle.model_id}")
    click.echo(f"  architecture {bundle.architecture}, input {bundle.preprocess.size} px ({bundle.preprocess.resize}, "
               f"{bundle.preprocess.interpolation}), mean {list(bundle.preprocess.mean)} std {list(bundle.preprocess.std)}")
    click.echo(f"  labels: {', '.join(bundle.labels)}")
    metrics = meta.get("metrics") or {}
    if metrics:
        click.echo(f"  validation accuracy {metrics.get('accuracy')} on {metrics.get('valid_images')} images")
    if meta.get("dataset_sha256"):
        click.echo(f"  training set sha256 {meta['dataset_sha256']}")
    click.echo(f"  created {meta['created_at']} ({meta.get('source', 'unknown source')})")


COMMANDS = (train, classify, model)
