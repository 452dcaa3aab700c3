"""Cheap per-frame out-of-domain signals: is this still unlike the photos the model knows?

A model trained on crisp daylight photos fails quietly on night infrared, fog, a covered
lens or a camera whose picture froze. None of that needs a second model to notice: five
cheap measurements on a copy of the frame scaled down to ``ood.analysis_width`` pixels
(about a millisecond for a 1280x720 frame) catch most of it:

* ``dark``           median luminance below ``dark_below`` (night without IR, lens covered);
* ``blur``           variance of the Laplacian below ``blur_below`` (fog, defocus, wet lens);
* ``grayscale``      mean difference between the colour channels below ``grayscale_below``:
                     infrared night images are grey;
* ``frozen``         the camera sent (nearly) the same picture ``frozen_after`` times in a row;
* ``low_confidence`` the model's confidence below ``low_confidence_below``.

A frame with any signal is out of domain: the pipeline tells the routing policy (which
may queue it for review), counts it per reason in
``monitor_out_of_domain_frames_total``, and marks the review item with its reasons.
On the real photos (``tests/observability/test_ood_signals.py``) the grey signal alone
flags 10 of the 15 night/IR/fog stills and none of the 211 daylight bear photos.
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass

import cv2
import numpy as np

from monitor.observe_config import OodConfig
from monitor.types import Frame, Prediction


class OodReason(str, enum.Enum):
    """Why a frame is out of domain; the values are metric labels and stored on review items."""

    DARK = "dark"
    BLUR = "blur"
    GRAYSCALE = "grayscale"
    FROZEN = "frozen"
    LOW_CONFIDENCE = "low_confidence"


@dataclass(frozen=True, slots=True)
class ImageMeasures:
    """The raw measurements behind the image signals (for tests, tuning and the README table).

    Attributes:
        luminance: median luminance, 0-255.
        sharpness: variance of the Laplacian of the grey image.
        colourfulness: mean absolute difference between colour channels, 0-255.
    """

    luminance: float
    sharpness: float
    colourfulness: float


def scale_down(image: np.ndarray, width: int) -> np.ndarray:
    """The image scaled to ``width`` pixels wide (area averaging); unchanged when narrower.

    Args:
        image: RGB uint8, (height, width, 3).
        width: target width in pixels.
    """
    height, current = image.shape[:2]
    if current <= width:
        return image
    target = (width, max(1, round(height * width / current)))
    return cv2.resize(image, target, interpolation=cv2.INTER_AREA)


def measure(image: np.ndarray, *, width: int = 160) -> ImageMeasures:
    """Measure luminance, sharpness and colourfulness on a scaled-down copy.

    Args:
        image: RGB uint8, (height, width, 3).
        width: the width measurements are taken at; thresholds depend on it.

    Returns:
        The measurements.
    """
    small = scale_down(image, width)
    return _measure_small(small, cv2.cvtColor(small, cv2.COLOR_RGB2GRAY))


def _measure_small(small: np.ndarray, grey: np.ndarray) -> ImageMeasures:
    channels = small.astype(np.int16)
    spread = (
        np.abs(channels[..., 0] - channels[..., 1]).mean()
        + np.abs(channels[..., 1] - channels[..., 2]).mean()
        + np.abs(channels[..., 0] - channels[..., 2]).mean()
    ) / 3.0
    return ImageMeasures(
        luminance=float(np.median(grey)),
        sharpness=float(cv2.Laplacian(grey, cv2.CV_64F).var()),
        colourfulness=float(spread),
    )


def image_reasons(measures: ImageMeasures, config: OodConfig) -> list[OodReason]:
    """The image signals that fire for these measurements (only those enabled in config)."""
    enabled = set(config.signals)
    reasons = []
    if "dark" in enabled and measures.luminance < config.dark_below:
        reasons.append(OodReason.DARK)
    if "blur" in enabled and measures.sharpness < config.blur_below:
        reasons.append(OodReason.BLUR)
    if "grayscale" in enabled and measures.colourfulness < config.grayscale_below:
        reasons.append(OodReason.GRAYSCALE)
    return reasons


class OodDetector:
    """Out-of-domain signals per frame, with each camera's last thumbnail for ``frozen``.

    Safe to call from several threads (the per-camera state is locked), though the
    pipeline calls it from its one inference thread.

    Args:
        config: the ``ood:`` config section.
    """

    def __init__(self, config: OodConfig) -> None:
        self.config = config
        self._enabled = set(config.signals) if config.enabled else set()
        self._last: dict[str, np.ndarray] = {}
        self._repeats: dict[str, int] = {}
        self._lock = threading.Lock()

    def check(self, frame: Frame, prediction: Prediction | None = None) -> tuple[OodReason, ...]:
        """The reasons this frame is out of domain; empty when it looks in domain.

        Args:
            frame: the still (its camera id keys the frozen-camera state).
            prediction: the model's output for it; None skips ``low_confidence``.

        Returns:
            The reasons, in :class:`OodReason` order.
        """
        if not self._enabled:
            return ()
        reasons: list[OodReason] = []
        small = scale_down(frame.image, self.config.analysis_width)
        grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
        if self._enabled & {"dark", "blur", "grayscale"}:
            reasons += image_reasons(_measure_small(small, grey), self.config)
        if "frozen" in self._enabled and self._frozen(frame.camera_id, grey):
            reasons.append(OodReason.FROZEN)
        if (
            "low_confidence" in self._enabled
            and prediction is not None
            and prediction.confidence < self.config.low_confidence_below
        ):
            reasons.append(OodReason.LOW_CONFIDENCE)
        return tuple(reasons)

    def _frozen(self, camera_id: str, grey: np.ndarray) -> bool:
        # Compared at the analysis width, not as a tiny thumbnail: a live sensor's noise
        # survives that much averaging, so a quiet but live scene differs by a grey level
        # or more while a stuck feed repeats the same picture to a fraction of one.
        thumb = grey.astype(np.float32)
        with self._lock:
            previous = self._last.get(camera_id)
            self._last[camera_id] = thumb
            # A change of resolution (a camera reconfigured) is a new picture, not a frozen one.
            if previous is None or previous.shape != thumb.shape:
                self._repeats[camera_id] = 0
                return False
            same = float(np.abs(thumb - previous).mean()) < self.config.frozen_difference_below
            repeats = self._repeats.get(camera_id, 0) + 1 if same else 0
            self._repeats[camera_id] = repeats
            return repeats >= self.config.frozen_after

    def forget(self, camera_id: str) -> None:
        """Drop a camera's frozen-camera state (it stopped, or moved to another worker)."""
        with self._lock:
            self._last.pop(camera_id, None)
            self._repeats.pop(camera_id, None)
