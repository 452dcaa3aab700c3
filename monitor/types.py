"""Value types that flow through the pipeline: Frame -> Prediction -> Route.

Every source returns Frames, every classifier returns Predictions and every routing
policy returns a Route, whatever the backend. They are small, immutable and validated
on construction so that a bad value fails where it is made, not three stages later.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

NONE_LABEL = "none"
DEFAULT_ALERT_LABELS = ("grizzly", "black", "polar", "sloth", "panda")


@dataclass(frozen=True, slots=True)
class Frame:
    """One still taken from a camera, a video file or a folder of images.

    Attributes:
        camera_id: the configured camera id the still came from.
        image: RGB pixels, shape (height, width, 3), dtype uint8.
        captured_at: when the scene was captured, timezone-aware (UTC).
        media_ts: seconds from the start of a video file; None for live streams and stills.
        origin: where in the source the still came from for a person to find it again
            (a file name, never a URL with credentials).
    """

    camera_id: str
    image: np.ndarray
    captured_at: datetime
    media_ts: float | None = None
    origin: str = ""

    def __post_init__(self) -> None:
        if not self.camera_id:
            raise ValueError("Frame.camera_id must not be empty")
        if self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != np.uint8:
            raise ValueError(
                f"Frame.image must be an HxWx3 uint8 RGB array, got shape {self.image.shape} "
                f"dtype {self.image.dtype}"
            )
        if self.captured_at.tzinfo is None:
            raise ValueError("Frame.captured_at must be timezone-aware")
        if self.media_ts is not None and not (math.isfinite(self.media_ts) and self.media_ts >= 0):
            raise ValueError(f"Frame.media_ts must be a finite number >= 0, got {self.media_ts}")

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


@dataclass(frozen=True, slots=True)
class Prediction:
    """What a classifier says about one image.

    Attributes:
        label: the most probable label.
        confidence: the probability of ``label``, in [0, 1].
        probabilities: every label's probability; they sum to about 1.
        model_id: identifies the model (and version) that made the prediction.
        crop: the square (x, y, width, height) of the frame that was classified, when the
            frame was cut into crops (see monitor.model.tiling); None for the whole image.
    """

    label: str
    confidence: float
    probabilities: dict[str, float]
    model_id: str
    crop: tuple[int, int, int, int] | None = None

    def __post_init__(self) -> None:
        if self.label not in self.probabilities:
            raise ValueError(f"Prediction.label {self.label!r} is not among its probabilities")
        if not 0.0 <= self.confidence <= 1.0:
            raise ValueError(f"Prediction.confidence must be in [0, 1], got {self.confidence}")
        total = sum(self.probabilities.values())
        if not math.isclose(total, 1.0, abs_tol=1e-3):
            raise ValueError(f"Prediction.probabilities must sum to 1, got {total:.4f}")
        if self.crop is not None and (len(self.crop) != 4 or min(self.crop) < 0 or min(self.crop[2:]) < 1):
            raise ValueError(f"Prediction.crop must be (x, y, width, height) with a positive size, got {self.crop}")

    @classmethod
    def from_probabilities(cls, probabilities: dict[str, float], model_id: str) -> "Prediction":
        """Build a prediction whose label is the most probable one."""
        label = max(probabilities, key=probabilities.__getitem__)
        return cls(label, float(probabilities[label]), dict(probabilities), model_id)


class QueueReason(str, enum.Enum):
    """Why a prediction was put in front of a person."""

    POSITIVE = "positive"
    NEGATIVE_SAMPLE = "negative_sample"
    OUT_OF_DOMAIN = "out_of_domain"
    AUDIT = "audit"


@dataclass(frozen=True, slots=True)
class Route:
    """What a routing policy decided to do with one prediction.

    Attributes:
        positive: the prediction is an alert label at or above the camera's threshold.
        review_reason: why the still goes to the review queue; None when it does not.
        alert: whether an alert is raised.
    """

    positive: bool
    review_reason: QueueReason | None = None
    alert: bool = False

    @property
    def queued(self) -> bool:
        return self.review_reason is not None


@dataclass(frozen=True, slots=True)
class Outcome:
    """A classified still and what the routing policy decided for it.

    Attributes:
        ood_reasons: why the still looked out of domain (``monitor.ood.OodReason``
            values); empty when it did not.
        alert_episode: a positive that starts an alert episode (no positive of the same
            camera shortly before); what the drift detector counts as one alert.
    """

    site_id: str
    frame: Frame
    prediction: Prediction
    route: Route
    ood_reasons: tuple[str, ...] = ()
    alert_episode: bool = False


@dataclass(slots=True)
class SourceStatus:
    """Health of one camera as its source sees it; mutated only by the source itself."""

    camera_id: str
    up: bool = False
    last_frame_at: datetime | None = None
    last_error: str | None = None
    reconnects: int = 0
    frames_failed: int = 0
    ended: bool = False
    extra: dict[str, str] = field(default_factory=dict)
