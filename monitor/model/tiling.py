"""Whole-frame coverage: classify a wide camera frame as overlapping square crops.

A classifier sees one square. A 16:9 frame squeezed into it distorts animals, and a
centre crop throws away the sides, where a bear walking into view first appears. So a
frame is cut into squares that together cover all of it (as many as the aspect ratio
needs, overlapping evenly; a finer grid on request for small, distant animals), every
crop of every frame in the batch is classified in one call, and each frame takes the
crop with the highest alert-label score. The prediction records which crop fired, so
the review UI can outline it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from monitor.model.base import Classifier
from monitor.types import Prediction


def tile_boxes(width: int, height: int, *, scale: int = 1) -> list[tuple[int, int, int, int]]:
    """Square crops that cover a ``width`` x ``height`` frame, as (x, y, side, side).

    Args:
        width: frame width in pixels.
        height: frame height in pixels.
        scale: 1 makes squares as tall as the frame's short side; n makes squares of
            1/n of it (a finer grid: about n times more crops along each axis).

    Returns:
        Boxes in row-major order; a square frame at scale 1 gives one box, the frame.

    Raises:
        ValueError: a non-positive size or scale.
    """
    if width < 1 or height < 1 or scale < 1:
        raise ValueError(f"cannot tile a {width}x{height} frame at scale {scale}")
    side = max(1, min(width, height) // scale)
    xs = _even_starts(width, side)
    ys = _even_starts(height, side)
    return [(x, y, side, side) for y in ys for x in xs]


def _even_starts(length: int, side: int) -> list[int]:
    """Starts of the fewest ``side``-long windows that cover ``length``, spread evenly."""
    count = math.ceil(length / side)
    if count == 1:
        return [(length - side) // 2]
    step = (length - side) / (count - 1)
    return [round(i * step) for i in range(count)]


class TiledClassifier(Classifier):
    """Wraps a classifier so each frame is judged by its most alarming square crop.

    Args:
        inner: the model that classifies square crops.
        alert_labels: labels whose probability makes a crop "alarming".
        scale: tile scale (see :func:`tile_boxes`).
    """

    def __init__(self, inner: Classifier, alert_labels: Sequence[str], *, scale: int = 1) -> None:
        if scale < 1:
            raise ValueError("scale must be at least 1")
        self.inner = inner
        self.model_id = inner.model_id
        self.labels = inner.labels
        self.scale = scale
        self._alert_labels = [label for label in alert_labels if label in inner.labels]

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        boxes = [tile_boxes(image.shape[1], image.shape[0], scale=self.scale) for image in images]
        crops = [image[y:y + h, x:x + w] for image, frame_boxes in zip(images, boxes)
                 for x, y, w, h in frame_boxes]
        tile_predictions = self.inner.predict_batch(crops) if crops else []
        results, start = [], 0
        for frame_boxes in boxes:
            candidates = tile_predictions[start:start + len(frame_boxes)]
            start += len(frame_boxes)
            best = max(range(len(candidates)), key=lambda i: self._alert_score(candidates[i]))
            results.append(dataclasses.replace(candidates[best], crop=frame_boxes[best]))
        return results

    def _alert_score(self, prediction: Prediction) -> float:
        return max((prediction.probabilities[label] for label in self._alert_labels), default=0.0)
