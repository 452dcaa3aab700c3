"""Whole-frame coverage: square crops cover every pixel; the most alarming crop wins."""

from __future__ import annotations

import numpy as np
import pytest

from monitor.model.base import Classifier
from monitor.model.tiling import TiledClassifier, tile_boxes
from monitor.types import Prediction


@pytest.mark.parametrize(
    "width, height, scale, count",
    [(1280, 720, 1, 2), (720, 720, 1, 1), (1920, 1080, 1, 2), (2560, 720, 1, 4), (720, 1280, 1, 2),
     (1280, 720, 2, 8), (1280, 720, 3, 18), (100, 7, 1, 15)],
)
def test_tiles_are_squares_that_cover_the_whole_frame(width, height, scale, count):
    boxes = tile_boxes(width, height, scale=scale)
    assert len(boxes) == count
    covered = np.zeros((height, width), bool)
    for x, y, w, h in boxes:
        assert w == h == min(width, height) // scale  # square: nothing squashed
        assert 0 <= x and x + w <= width and 0 <= y and y + h <= height
        covered[y:y + h, x:x + w] = True
    assert covered.all()


class BrightnessClassifier(Classifier):
    """Says 'grizzly' in proportion to a crop's brightness: a stand-in for a bear."""

    model_id = "brightness@test"
    labels = ("grizzly", "teddy", "none")

    def __init__(self):
        self.calls = []

    def predict_batch(self, images):
        self.calls.append(len(images))
        out = []
        for image in images:
            bear = float(image.mean()) / 255
            out.append(Prediction.from_probabilities({"grizzly": bear, "teddy": 0.0, "none": 1 - bear}, self.model_id))
        return out


def test_a_bear_at_the_edge_of_a_wide_frame_is_found_and_its_crop_recorded():
    frame = np.zeros((720, 1280, 3), np.uint8)
    frame[300:420, 1200:1280] = 255  # at the right edge, outside any centred square
    inner = BrightnessClassifier()
    tiled = TiledClassifier(inner, ["grizzly"])
    (prediction,) = tiled.predict_batch([frame])
    assert prediction.crop == (560, 0, 720, 720)
    assert prediction.probabilities["grizzly"] == pytest.approx(120 * 80 / 720**2, rel=1e-3)
    # A centred square alone would not see it at all.
    centre = inner.predict(frame[:, 280:1000])
    assert centre.probabilities["grizzly"] == 0


def test_all_crops_of_all_frames_go_in_one_batch():
    inner = BrightnessClassifier()
    frames = [np.zeros((720, 1280, 3), np.uint8), np.zeros((480, 640, 3), np.uint8), np.zeros((64, 64, 3), np.uint8)]
    predictions = TiledClassifier(inner, ["grizzly"], scale=2).predict_batch(frames)
    assert inner.calls == [8 + 6 + 4]  # 2x4 + 2x3 + 2x2 squares of half the short side
    assert len(predictions) == 3 and all(p.crop is not None for p in predictions)
