"""Model bundles: a folder with an ONNX graph and a JSON description, loaded without pickle.

A bundle is what training, ``monitor model import`` and the built-in model all produce::

    models/bears-v1/
      model.onnx         float32 NCHW batch in, one probability per label out (softmax inside)
      bundle.json        labels, architecture, input size, preprocessing (resize policy,
                         normalisation), training metrics, sha256 of the training set and of
                         model.onnx, creation time, model id
      metrics.json, confusion_matrix.png, top_losses.png   (written by training; not read here)

Loading reads JSON and the ONNX protobuf only - never a pickle, so a bundle cannot run code
on the machine that loads it - checks the graph's sha256 against the JSON and hands both to a
runtime (:func:`monitor.model.runtime_torch.open_runtime`: ONNX Runtime on the CPU, PyTorch
on a CUDA GPU). Importing this module and loading a bundle on the CPU never imports torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from monitor.model.base import Classifier, ModelError
from monitor.model.onnx_export import ONNX_INPUT, ONNX_OUTPUT, export_onnx, sha256_file
from monitor.model.preprocess import PreprocessSpec

log = logging.getLogger(__name__)

__all__ = ["export_onnx", "sha256_file"]  # re-exported: training writes bundles with them

BUNDLE_FILE = "bundle.json"
ONNX_FILE = "model.onnx"
BUNDLE_FORMAT = 1
# Keys every bundle.json must have, with the type each must be.
REQUIRED_KEYS: dict[str, type | tuple[type, ...]] = {
    "bundle_format": int,
    "model_id": str,
    "labels": list,
    "architecture": str,
    "input_size": int,
    "preprocess": dict,
    "onnx_file": str,
    "onnx_sha256": str,
    "created_at": str,
}
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ModelUsageError(ModelError):
    """The user's input is wrong (a data folder, an option, a config): the CLI exits 2, not 1."""


class LabelMismatchError(ModelUsageError):
    """The model cannot predict any of the labels the config alerts on."""


@dataclass(frozen=True, slots=True)
class Bundle:
    """A checked bundle on disk.

    Attributes:
        directory: the bundle folder.
        onnx_path: its ONNX graph.
        model_id: id stored with every prediction made by it.
        labels: output labels, in the graph's output order.
        preprocess: how images become the graph's input.
        meta: the whole bundle.json.
    """

    directory: Path
    onnx_path: Path
    model_id: str
    labels: tuple[str, ...]
    preprocess: PreprocessSpec
    meta: dict[str, Any]

    @property
    def architecture(self) -> str:
        """The architecture name as the user gave it (e.g. ``efficientnet_lite0``)."""
        return str(self.meta["architecture"])


def dataset_sha256(files: Iterable[Path], root: Path) -> str:
    """Fingerprint of a training set: its sorted relative file list and every file's bytes.

    Renaming, moving between classes, adding, removing or editing any image changes it.

    Args:
        files: the image files.
        root: the data folder the relative paths are taken from.

    Returns:
        Hex sha256.

    Raises:
        OSError: a file cannot be read.
    """
    digest = hashlib.sha256()
    for relative, path in sorted((Path(p).relative_to(root).as_posix(), Path(p)) for p in files):
        digest.update(relative.encode() + b"\0")
        digest.update(sha256_file(path).encode() + b"\n")
    return digest.hexdigest()


def resolve_bundle_dir(path: Path) -> Path:
    """The bundle folder for a path the user gave: the folder, its bundle.json or its model.onnx."""
    path = Path(path).expanduser()
    if path.is_file() and path.name in (BUNDLE_FILE, ONNX_FILE):
        return path.parent
    return path


def looks_like_bundle(path: Path) -> bool:
    """Whether ``path`` names a bundle folder (or a file in one), judged by bundle.json's presence."""
    return (resolve_bundle_dir(path) / BUNDLE_FILE).is_file()


def read_bundle(path: Path, *, verify_sha256: bool = True) -> Bundle:
    """Read and check a bundle without running anything from it.

    Args:
        path: the bundle folder, or its bundle.json or model.onnx.
        verify_sha256: check model.onnx against the sha256 in bundle.json (about 20 ms
            for an 18 MB graph); callers that just checked it may skip it.

    Returns:
        The checked :class:`Bundle`.

    Raises:
        ModelError: the folder is missing or not a bundle, bundle.json is unreadable,
            invalid or from a newer format, or model.onnx is missing or does not match
            its sha256. The message is one line that names the fix.
    """
    directory = resolve_bundle_dir(path)
    meta_path = directory / BUNDLE_FILE
    if not directory.exists():
        raise ModelError(f"model bundle {directory} does not exist; check the path (or train one with `monitor train`)")
    if not directory.is_dir() or not meta_path.is_file():
        raise ModelError(
            f"{directory} is not a model bundle (no {BUNDLE_FILE}); give a folder made by "
            "`monitor train` or `monitor model import`"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(
            f"{meta_path} is unreadable ({exc.__class__.__name__}); the bundle is corrupt, re-export it"
        ) from None
    if not isinstance(meta, dict):
        raise ModelError(f"{meta_path} is not a JSON object; the bundle is corrupt, re-export it")
    for key, kind in REQUIRED_KEYS.items():
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise ModelError(f"{meta_path} has no valid {key!r}; the bundle is corrupt or incomplete, re-export it")
    if meta["bundle_format"] > BUNDLE_FORMAT:
        raise ModelError(
            f"{meta_path} has bundle format {meta['bundle_format']}, newer than this version "
            f"reads ({BUNDLE_FORMAT}); upgrade bear-monitor"
        )
    labels = meta["labels"]
    if len(labels) < 2 or not all(isinstance(x, str) and x for x in labels) or len(set(labels)) != len(labels):
        raise ModelError(f"{meta_path} labels must be 2 or more distinct names, got {labels!r}; re-export the bundle")
    try:
        preprocess = PreprocessSpec.from_dict(meta["preprocess"])
    except ValueError as exc:
        raise ModelError(f"{meta_path} has an invalid 'preprocess' ({exc}); re-export the bundle") from None
    if preprocess.size != meta["input_size"]:
        raise ModelError(
            f"{meta_path} says input_size {meta['input_size']} but preprocess size {preprocess.size}; re-export the bundle"
        )
    # The graph must sit inside the bundle: a JSON that points elsewhere is refused.
    if not _SAFE_NAME.fullmatch(meta["onnx_file"]):
        raise ModelError(f"{meta_path} onnx_file {meta['onnx_file']!r} is not a plain file name; re-export the bundle")
    onnx_path = directory / meta["onnx_file"]
    if verify_sha256:
        try:
            actual = sha256_file(onnx_path)
        except OSError as exc:
            raise ModelError(
                f"{onnx_path} is unreadable ({exc.strerror or exc.__class__.__name__}); the bundle is incomplete, re-export it"
            ) from None
        if actual != meta["onnx_sha256"]:
            raise ModelError(
                f"{onnx_path} does not match the sha256 in {BUNDLE_FILE} (corrupt or replaced); re-export the bundle"
            )
    return Bundle(
        directory=directory,
        onnx_path=onnx_path,
        model_id=meta["model_id"],
        labels=tuple(labels),
        preprocess=preprocess,
        meta=meta,
    )


def load_bundle(path: Path, *, runtime: str | None = None) -> Classifier:
    """Read a bundle and open it on a runtime.

    Args:
        path: the bundle folder, or its bundle.json or model.onnx.
        runtime: ``auto`` (default: a CUDA GPU if there is one, else ONNX Runtime on the
            CPU), ``onnx-cpu``, ``torch-cpu`` or ``torch-cuda``; see
            :mod:`monitor.model.runtime_torch`.

    Returns:
        A ready classifier.

    Raises:
        ModelError: the bundle is invalid (see :func:`read_bundle`) or the runtime cannot
            open it.
    """
    from monitor.model.runtime_torch import open_runtime

    return open_runtime(read_bundle(path), runtime=runtime)


def check_alert_labels(labels: Sequence[str], alert_labels: Sequence[str], *, model_id: str = "the model") -> list[str]:
    """Check that a model can predict the labels a config alerts on.

    Args:
        labels: the model's labels.
        alert_labels: the config's ``alert_labels``.
        model_id: named in the message.

    Returns:
        The alert labels the model cannot predict (logged as a warning); empty when all fit.

    Raises:
        LabelMismatchError: none of the alert labels is among the model's labels, so the
            model could never raise an alert.
    """
    known = set(labels)
    missing = [label for label in alert_labels if label not in known]
    if alert_labels and len(missing) == len(alert_labels):
        raise LabelMismatchError(
            f"{model_id} predicts {', '.join(labels)} but none of the config's alert_labels "
            f"({', '.join(alert_labels)}); set alert_labels to labels the model knows or use another model"
        )
    if missing:
        log.warning("%s cannot predict alert label(s) %s; they will never alert", model_id, ", ".join(missing))
    return missing


def make_model_id(name: str, onnx_sha256: str) -> str:
    """``<name>@<first 12 hex digits of the graph's sha256>``: new weights, new id."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "model"
    return f"{safe}@{onnx_sha256[:12]}"


def bundle_meta(
    *,
    model_id: str,
    labels: Sequence[str],
    architecture: str,
    preprocess: PreprocessSpec,
    onnx_sha256: str,
    onnx_file: str = ONNX_FILE,
    **extra: Any,
) -> dict[str, Any]:
    """The bundle.json content: the required keys first, then ``extra``.

    Args:
        model_id: see :func:`make_model_id`.
        labels: output labels in order.
        architecture: the architecture name as the user knows it.
        preprocess: the validation preprocessing the graph expects.
        onnx_sha256: sha256 of the graph file.
        onnx_file: the graph's file name inside the bundle.
        **extra: anything else worth keeping (training metrics, dataset hash, versions).

    Returns:
        A JSON-ready dict.
    """
    return {
        "bundle_format": BUNDLE_FORMAT,
        "model_id": model_id,
        "labels": list(labels),
        "architecture": architecture,
        "input_size": preprocess.size,
        "preprocess": preprocess.to_dict(),
        "normalisation": {"mean": list(preprocess.mean), "std": list(preprocess.std)},
        "onnx_file": onnx_file,
        "onnx_sha256": onnx_sha256,
        "onnx_input": ONNX_INPUT,
        "onnx_output": ONNX_OUTPUT,
        "output": "probabilities",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **extra,
    }


def write_bundle(
    out: Path,
    *,
    onnx_source: Path,
    name: str | None = None,
    labels: Sequence[str],
    architecture: str,
    preprocess: PreprocessSpec,
    extra_files: Mapping[str, Path] | None = None,
    **extra: Any,
) -> Bundle:
    """Install an exported graph and its description as a bundle folder, atomically.

    Everything is written into a hidden sibling folder first and renamed into place, so a
    crash never leaves a half bundle under ``out``. An existing bundle at ``out`` is
    replaced; any other existing, non-empty folder or file is refused.

    Args:
        out: the bundle folder to create.
        onnx_source: the exported ONNX file (copied).
        name: the model's name in its id; default ``out``'s folder name.
        labels: output labels in order.
        architecture: the architecture name as the user knows it.
        preprocess: the validation preprocessing the graph expects.
        extra_files: file name in the bundle -> source file to copy along (reports).
        **extra: more bundle.json keys (see :func:`bundle_meta`).

    Returns:
        The installed, re-read bundle.

    Raises:
        ModelUsageError: ``out`` exists and is not a bundle (nothing is overwritten).
        ModelError: the folder cannot be written.
    """
    out = Path(out).expanduser()
    check_output_folder(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as exc:
        raise ModelError(f"cannot create {out} ({exc.strerror or exc}); choose a writable --out") from None
    try:
        shutil.copyfile(onnx_source, staging / ONNX_FILE)
        for file_name, source in (extra_files or {}).items():
            shutil.copyfile(source, staging / file_name)
        onnx_sha = sha256_file(staging / ONNX_FILE)
        meta = bundle_meta(
            model_id=make_model_id(name or out.name, onnx_sha),
            labels=labels,
            architecture=architecture,
            preprocess=preprocess,
            onnx_sha256=onnx_sha,
            **extra,
        )
        (staging / BUNDLE_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        for child in staging.iterdir():
            os.chmod(child, 0o644)
        os.chmod(staging, 0o755)
        _swap_into_place(staging, out)
    except OSError as exc:
        raise ModelError(f"cannot write the bundle {out} ({exc.strerror or exc}); free disk space or choose another --out") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return read_bundle(out)


def check_output_folder(out: Path) -> None:
    """Refuse an ``--out`` that would overwrite something that is not a bundle.

    Raises:
        ModelUsageError: ``out`` is a file, or a non-empty folder without bundle.json.
    """
    out = Path(out).expanduser()
    if out.is_file():
        raise ModelUsageError(f"--out {out} is a file; give a folder for the bundle")
    if out.is_dir() and any(out.iterdir()) and not (out / BUNDLE_FILE).is_file():
        raise ModelUsageError(f"--out {out} is a non-empty folder that is not a model bundle; choose a new folder")


def _swap_into_place(staging: Path, out: Path) -> None:
    # rename() cannot replace a non-empty folder, so the old bundle steps aside first and is
    # deleted only once the new one is in place.
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    try:
        os.replace(staging, out)
    except OSError:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
