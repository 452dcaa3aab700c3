"""Model loading: one factory, :func:`load_model`, that turns a model reference into a Classifier.

A reference is chosen by its scheme, the part before the first ``:``, looked up in
``MODEL_LOADERS`` (a registry, not an if-chain): ``builtin:<name>`` is a model built into
the project (today ``builtin:imagenet-bears``). Importing this package is cheap: loaders
import their runtimes (onnxruntime, torch) only when called.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from monitor.model.base import Classifier, ModelError

__all__ = ["Classifier", "ModelError", "MODEL_LOADERS", "accepted_refs", "load_model"]

# scheme -> loader(the part after "<scheme>:", *, cache_dir) -> Classifier
ModelLoader = Callable[..., Classifier]


def _load_builtin(name: str, *, cache_dir: Path) -> Classifier:
    from monitor.model.builtin import load_builtin

    return load_builtin(name, cache_dir=cache_dir)


MODEL_LOADERS: dict[str, ModelLoader] = {
    "builtin": _load_builtin,
}


def accepted_refs() -> list[str]:
    """The model references :func:`load_model` accepts, for help texts and error messages."""
    from monitor.model.builtin import BUILTIN_NAMES, SCHEME

    # Model bundles: when bundle.py lands, add "a path to a model bundle" here.
    return [f"{SCHEME}:{name}" for name in BUILTIN_NAMES]


def load_model(ref: str, *, cache_dir: Path) -> Classifier:
    """Load the classifier a config's ``model`` field names.

    Args:
        ref: ``builtin:<name>`` (e.g. ``builtin:imagenet-bears``).
        cache_dir: folder where built models are cached (the config's ``model_cache``).

    Returns:
        A ready classifier.

    Raises:
        ModelError: an unknown reference (the message lists the accepted ones), or the
            model cannot be built or opened.
    """
    scheme, sep, rest = str(ref).strip().partition(":")
    loader = MODEL_LOADERS.get(scheme) if sep else None
    if loader is not None:
        return loader(rest, cache_dir=Path(cache_dir))
    # Model bundles go here: a ref without a registered scheme that names an existing
    # bundle directory/file -> monitor.model.bundle.load_bundle(Path(ref)). Checked after
    # the schemes so that a path containing ":" cannot shadow them.
    raise ModelError(f"unknown model {ref!r}; use one of: {', '.join(accepted_refs())}")
