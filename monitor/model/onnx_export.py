"""Exporting a torch module to ONNX, and proving the graph computes what the module does.

Responsible for the one export path shared by the built-in model's cache
(:mod:`monitor.model.builtin`) and trained bundles (:mod:`monitor.model.bundle`):

* :func:`export_onnx` uses the torch.export-based exporter (its graphs fold BatchNorm and
  "same" padding and ran ~190 images/s in ONNX Runtime on 2 cores against ~145 for the
  TorchScript exporter's, which keeps padding as runtime shape arithmetic), falling back
  to the TorchScript exporter when it fails;
* then ONNX Runtime and torch must agree within :data:`TOLERANCE` on a random batch of
  another size than the export example, which also checks the dynamic batch axis.

Also :func:`sha256_file`, which both use to name and verify graphs.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from monitor.model.base import ModelError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

ONNX_OPSET = 18
ONNX_INPUT = "input"
ONNX_OUTPUT = "probabilities"
TOLERANCE = 1e-4
_FALLBACK_OPSET = 17
_CHATTY_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx", "torch.export")


@dataclass(frozen=True)
class ExportInfo:
    """How a graph was made, for the bundle's JSON description."""

    exporter: str  # "torch.export" or "torchscript"
    opset: int
    max_abs_diff: float  # ONNX Runtime vs torch on the self-check batch

    def as_meta(self) -> dict[str, str | int | float]:
        """The bundle.json keys that record it."""
        return {"onnx_exporter": self.exporter, "onnx_opset": self.opset, "export_max_abs_diff": self.max_abs_diff}


def export_onnx(module: torch.nn.Module, out_path: Path, *, size: int) -> ExportInfo:
    """Export a float32 NCHW -> probabilities module with a dynamic batch axis, and check it.

    Args:
        module: outputs probabilities; put in eval mode here.
        out_path: the ``.onnx`` file to write (one file, no external data).
        size: the input's side in pixels.

    Raises:
        ModelError: both exporters failed, or the graph disagrees with torch.
    """
    import torch

    module = module.eval()
    example = torch.zeros(2, 3, size, size)
    common = {"input_names": [ONNX_INPUT], "output_names": [ONNX_OUTPUT], "verbose": False}
    with warnings.catch_warnings(), _quiet_loggers(*_CHATTY_LOGGERS):
        warnings.simplefilter("ignore")  # exporter deprecation chatter, not actionable here
        try:
            torch.onnx.export(
                module, (example,), str(out_path), dynamo=True, external_data=False, opset_version=ONNX_OPSET,
                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), **common,
            )
            exporter, opset = "torch.export", ONNX_OPSET
        except Exception as exc:  # the dynamo exporter is young; the old one still works
            log.warning("torch.export ONNX export failed (%s); using the TorchScript exporter", exc)
            try:
                torch.onnx.export(
                    module, (example,), str(out_path), dynamo=False, opset_version=_FALLBACK_OPSET,
                    dynamic_axes={ONNX_INPUT: {0: "batch"}, ONNX_OUTPUT: {0: "batch"}}, **common,
                )
            except Exception as fallback_exc:
                first_line = str(fallback_exc).splitlines()[0] if str(fallback_exc) else ""
                raise ModelError(
                    f"cannot export the model to ONNX ({fallback_exc.__class__.__name__}: {first_line}); "
                    "this architecture may use an operator ONNX lacks, try another --arch"
                ) from fallback_exc
            exporter, opset = "torchscript", _FALLBACK_OPSET
    return ExportInfo(exporter, opset, self_check(module, out_path, size=size))


def self_check(module: torch.nn.Module, onnx_path: Path, *, size: int) -> float:
    """Run the graph and ``module`` on the same random batch of 3.

    Returns:
        The largest absolute difference between their outputs.

    Raises:
        ModelError: the graph is invalid, has another output shape, or differs by more
            than :data:`TOLERANCE`.
    """
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch

    try:
        onnx.checker.check_model(str(onnx_path))
    except Exception as exc:
        raise ModelError(f"the exported ONNX graph is invalid ({exc.__class__.__name__}); pin torch/onnx versions") from exc
    generator = torch.Generator().manual_seed(0)
    # Batch 3 differs from the export example's 2, so this also checks the dynamic batch axis.
    batch = torch.rand(3, 3, size, size, generator=generator) * 4 - 2
    with torch.no_grad():
        expected = module(batch).float().numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (actual,) = session.run(None, {session.get_inputs()[0].name: batch.numpy()})
    if actual.shape != expected.shape:
        raise ModelError(f"the exported ONNX graph outputs {actual.shape}, torch {expected.shape}; pin torch/onnx versions")
    max_abs_diff = float(np.abs(actual - expected).max())
    if not max_abs_diff <= TOLERANCE:
        raise ModelError(
            f"the exported ONNX graph differs from torch by {max_abs_diff:.2e} (> {TOLERANCE}); "
            "pin torch/onnx/onnxruntime versions"
        )
    return max_abs_diff


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (about 20 ms for an 18 MB graph).

    Raises:
        OSError: the file cannot be read.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _quiet_loggers(*names: str) -> Iterator[None]:
    """Silence the exporter's INFO chatter (~80 lines of graph passes) for the duration."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
