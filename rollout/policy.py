"""What happens to a prediction at each rollout stage: review queue, alert, or both.

The pipeline receives a policy object and calls :meth:`RoutingPolicy.route` for every
prediction; it never looks inside. Only the manual stage exists so far: every positive
goes to a person, a sample of negatives too (so misses can be measured), nobody is
alerted.
"""

from __future__ import annotations

import random
from typing import Protocol

from monitor.types import Prediction, QueueReason, Route


class RoutingPolicy(Protocol):
    """Decides, per prediction, whether it is reviewed and whether it alerts."""

    def route(self, *, site_id: str, camera_id: str, prediction: Prediction, positive: bool) -> Route:
        """Return what to do with one prediction.

        Args:
            site_id: the camera's site; stages are per site.
            camera_id: the camera that took the still.
            prediction: the classifier's output.
            positive: the prediction is an alert label at or above the camera's threshold.
        """
        ...


class ManualPolicy:
    """Manual stage: every positive is reviewed, negatives are sampled, nothing alerts.

    Args:
        negative_sample_rate: share of negatives sent to review, in [0, 1].
        rng: random source; pass a seeded one in tests for repeatable sampling.
    """

    def __init__(self, negative_sample_rate: float, rng: random.Random | None = None) -> None:
        if not 0.0 <= negative_sample_rate <= 1.0:
            raise ValueError(f"negative_sample_rate must be in [0, 1], got {negative_sample_rate}")
        self.negative_sample_rate = negative_sample_rate
        self._rng = rng or random.Random()

    def route(self, *, site_id: str, camera_id: str, prediction: Prediction, positive: bool) -> Route:
        if positive:
            return Route(positive=True, review_reason=QueueReason.POSITIVE, alert=False)
        if self._rng.random() < self.negative_sample_rate:
            return Route(positive=False, review_reason=QueueReason.NEGATIVE_SAMPLE, alert=False)
        return Route(positive=False)
