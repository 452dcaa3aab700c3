"""Model loading: one factory, :func:`load_model`, that turns a model reference into a Classifier.

A reference is chosen by its scheme, the part before the first ``:``, looked up in
``MODEL_LOADERS`` (a registry, not an if-chain): ``builtin:<name>`` is a model built into
the project (today ``builtin:imagenet-bears``). A reference without a registered scheme
that names a model bundle folder (or its bundle.json / model.onnx) loads that bundle
(:mod:`monitor.model.bundle`). Every model runs on the runtime chosen by
:func:`monitor.model.runtime_torch.choose_runtime` (ONNX Runtime on the CPU unless a CUDA
GPU is present). Importing this package is cheap: loaders import their runtimes
(onnxruntime, torch) only when called.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from monitor.model.base import Classifier, ModelError

__all__ = ["Classifier", "ModelError", "MODEL_LOADERS", "accepted_refs", "load_model"]

# scheme -> loader(the part after "<scheme>:", *, cache_dir, runtime) -> Classifier
ModelLoader = Callable[..., Classifier]


def _load_builtin(name: str, *, cache_dir: Path, runtime: str | None = None) -> Classifier:
    from monitor.model.builtin import load_builtin

    return load_builtin(name, cache_dir=cache_dir, runtime=runtime)


MODEL_LOADERS: dict[str, ModelLoader] = {
    "builtin": _load_builtin,
}


def accepted_refs() -> list[str]:
    """The model references :func:`load_model` accepts, for help texts and error messages."""
    from monitor.model.builtin import BUILTIN_NAMES, SCHEME

    return [*(f"{SCHEME}:{name}" for name in BUILTIN_NAMES), "a path to a model bundle folder"]


def load_model(
    ref: str,
    *,
    cache_dir: Path,
    runtime: str | None = None,
    alert_labels: Sequence[str] | None = None,
) -> Classifier:
    """Load the classifier a config's ``model`` field names.

    Args:
        ref: ``builtin:<name>`` (e.g. ``builtin:imagenet-bears``) or the path of a model
            bundle folder (or of its bundle.json or model.onnx).
        cache_dir: folder where built models are cached (the config's ``model_cache``).
        runtime: ``auto``, ``onnx-cpu``, ``torch-cpu`` or ``torch-cuda``; None reads
            ``$MONITOR_RUNTIME``, default ``auto``.
        alert_labels: the config's ``alert_labels``; when given, a model that can predict
            none of them is refused (a model that misses only some is logged).

    Returns:
        A ready classifier.

    Raises:
        ModelError: an unknown reference (the message lists the accepted ones), or the
            model cannot be built or opened. Its subclass ``ModelUsageError`` (from
            :mod:`monitor.model.bundle`) marks the user's mistakes: an unknown runtime,
            labels that do not fit ``alert_labels``.
    """
    text = str(ref).strip()
    scheme, sep, rest = text.partition(":")
    loader = MODEL_LOADERS.get(scheme) if sep else None
    if loader is not None:
        model = loader(rest, cache_dir=Path(cache_dir), runtime=runtime)
    else:
        # Bundles are checked after the schemes so that a path containing ":" cannot shadow them.
        from monitor.model.bundle import load_bundle, looks_like_bundle

        path = Path(text).expanduser() if text else None
        if path is None or not path.exists():
            raise ModelError(f"unknown model {ref!r}; use one of: {', '.join(accepted_refs())}")
        if not looks_like_bundle(path):
            raise ModelError(
                f"{path} is not a model bundle (no bundle.json); give a folder made by `monitor train` or "
                f"`monitor model import`, or one of: {', '.join(accepted_refs())}"
            )
        model = load_bundle(path, runtime=runtime)
    if alert_labels is not None:
        from monitor.model.bundle import check_alert_labels

        check_alert_labels(model.labels, alert_labels, model_id=model.model_id)
    return model
