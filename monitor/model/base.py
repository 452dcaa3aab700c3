"""The classifier interface every model backend implements."""

from __future__ import annotations

import abc
from collections.abc import Sequence

import numpy as np

from monitor.types import Prediction


class ModelError(Exception):
    """A model cannot be loaded or run; the message is one line that names the fix."""


class Classifier(abc.ABC):
    """Labels images in batches.

    Attributes:
        model_id: stable id of the model and its version, stored with every prediction.
        labels: the labels it predicts, in output order.
    """

    model_id: str
    labels: tuple[str, ...]

    @abc.abstractmethod
    def predict_batch(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        """Classify RGB uint8 images (HxWx3, any size) and return one Prediction each."""

    def predict(self, image: np.ndarray) -> Prediction:
        """Classify one image."""
        return self.predict_batch([image])[0]


class ProbabilityClassifier(Classifier):
    """A classifier whose backend gives a probability per label: the ONNX and torch runtimes."""

    @abc.abstractmethod
    def predict_proba(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """float32 array (len(images), len(labels)) of probabilities in [0, 1].

        Raises:
            ValueError: an image is not an HxWx3 uint8 array.
            ModelError: the runtime failed.
        """

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        """Classify RGB uint8 images (HxWx3, any size); one :class:`Prediction` each, in order.

        Raises:
            ValueError: an image is not an HxWx3 uint8 array.
            ModelError: the runtime failed.
        """
        return [
            Prediction.from_probabilities(
                {label: float(p) for label, p in zip(self.labels, row, strict=True)}, self.model_id
            )
            for row in self.predict_proba(images)
        ]
