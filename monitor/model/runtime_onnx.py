"""Run an ONNX image classifier on the CPU with ONNX Runtime.

:class:`OnnxClassifier` wraps one ``onnxruntime.InferenceSession`` whose graph takes the
float32 NCHW batch made by :mod:`monitor.model.preprocess` and outputs one probability per
label (softmax and any label grouping are inside the graph). It is the CPU runtime for the
built-in model and for exported bundles alike, and it never imports torch.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from monitor.model.base import ModelError, ProbabilityClassifier
from monitor.model.preprocess import PreprocessSpec, preprocess_batch


def cpu_threads() -> int:
    """The number of CPU cores this process may run on (respects affinity and cpusets)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class OnnxClassifier(ProbabilityClassifier):
    """A classifier backed by an ONNX graph that outputs per-label probabilities.

    Safe to call from several threads: runs are serialised by a lock, because one run
    already uses every core and two at once would only fight over them.

    Attributes:
        model_id: stable id of the model and its version, stored with every prediction.
        labels: the labels, in the order of the graph's output columns.
        preprocess: how images are turned into the graph's input.
        model_path: the ONNX file.
    """

    def __init__(
        self,
        model_path: Path,
        *,
        labels: Sequence[str],
        preprocess: PreprocessSpec,
        model_id: str,
        threads: int | None = None,
    ) -> None:
        """Open the ONNX graph in an ONNX Runtime CPU session and check its shapes.

        Args:
            model_path: the ``.onnx`` file; its single input is (N, 3, size, size) float32
                and its single output (N, len(labels)) probabilities.
            labels: label names in output order.
            preprocess: the preprocessing the graph was validated with.
            model_id: id stored with each prediction.
            threads: intra-op threads; default: the number of usable CPU cores.

        Raises:
            ModelError: the file cannot be opened, or its input/output shapes do not
                match ``preprocess.size`` and ``labels``.
        """
        import onnxruntime as ort  # deferred: importing it costs ~0.1 s

        self.model_path = Path(model_path)
        self.labels = tuple(labels)
        self.preprocess = preprocess
        self.model_id = model_id
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or cpu_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # warnings about unused initialisers are noise here
        try:
            self._session = ort.InferenceSession(
                str(self.model_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own exception types for bad files
            raise ModelError(
                f"cannot open ONNX model {self.model_path} ({exc.__class__.__name__}); "
                "delete the file so it is rebuilt, or re-export it"
            ) from exc
        inputs = self._session.get_inputs()
        outputs = self._session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelError(
                f"ONNX model {self.model_path} has {len(inputs)} inputs and {len(outputs)} "
                "outputs; expected one image input and one probability output"
            )
        self._input_name = inputs[0].name
        self._check_dims(inputs[0].shape, [None, 3, preprocess.size, preprocess.size], "input")
        self._check_dims(outputs[0].shape, [None, len(self.labels)], "output")
        self._lock = threading.Lock()

    def _check_dims(self, actual: Sequence[object], expected: Sequence[int | None], what: str) -> None:
        # Symbolic dimensions (str/None) in the graph match anything; fixed ones must agree.
        ok = len(actual) == len(expected) and all(
            want is None or not isinstance(got, int) or got == want
            for got, want in zip(actual, expected, strict=True)
        )
        if not ok:
            raise ModelError(
                f"ONNX model {self.model_path} {what} shape {list(actual)} does not match "
                f"{['N' if d is None else d for d in expected]}; the model and its metadata "
                "disagree, re-export it"
            )

    def predict_proba(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Per-label probabilities for each image.

        Args:
            images: RGB uint8 arrays (height, width, 3), any sizes; may be empty.

        Returns:
            float32 array of shape (len(images), len(labels)); rows sum to about 1.

        Raises:
            ValueError: an image is not an HxWx3 uint8 array.
            ModelError: the runtime failed.
        """
        if len(images) == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return self.run_preprocessed(preprocess_batch(images, self.preprocess))

    def run_preprocessed(self, batch: np.ndarray) -> np.ndarray:
        """Run the graph on a batch already made by :func:`preprocess_batch`.

        Args:
            batch: float32 array of shape (N, 3, size, size), N >= 1.

        Returns:
            float32 array of shape (N, len(labels)), clipped to [0, 1].

        Raises:
            ModelError: the runtime failed (for example on a wrongly shaped batch).
        """
        try:
            with self._lock:
                (probabilities,) = self._session.run(None, {self._input_name: batch})
        except Exception as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise ModelError(
                f"ONNX Runtime failed on a batch of shape {getattr(batch, 'shape', '?')} with "
                f"{self.model_path.name} ({exc.__class__.__name__}: {first_line})"
            ) from exc
        # float32 rounding can put a probability a hair outside [0, 1]; Prediction rejects that.
        return np.clip(probabilities, 0.0, 1.0)

    def __repr__(self) -> str:
        return f"OnnxClassifier({self.model_id!r}, {self.model_path})"
