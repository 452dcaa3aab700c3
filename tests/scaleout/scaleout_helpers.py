"""What the scale-out tests share besides fixtures: the cameras, a routed still, a fake clock.

A module of its own (not conftest.py) so tests import it by a name no other test
package uses; ``from conftest import ...`` picks whichever conftest came first on the path.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np

from monitor.types import Frame, Outcome, Prediction, QueueReason, Route

LABELS = ("grizzly", "black", "polar", "sloth", "panda", "teddy", "none")
T0 = datetime(2026, 7, 1, 12, 0, tzinfo=timezone.utc)
CAMERAS = {"north": ["gate", "trail", "creek"], "south": ["lake"]}


def routed(
    camera_id: str = "gate",
    captured_at: datetime = T0,
    *,
    label: str = "grizzly",
    confidence: float = 0.9,
    alert: bool = True,
    queued: bool = True,
    seed: int = 0,
) -> Outcome:
    """A routed still of a camera in CAMERAS: positive, alerting and queued by default."""
    site = next(site for site, cameras in CAMERAS.items() if camera_id in cameras)
    others = [name for name in LABELS if name != label]
    probabilities = {label: confidence, **{name: (1.0 - confidence) / len(others) for name in others}}
    image = np.random.default_rng(seed).integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
    return Outcome(
        site_id=site,
        frame=Frame(camera_id=camera_id, image=image, captured_at=captured_at),
        prediction=Prediction(label, confidence, probabilities, "test-model@1"),
        route=Route(positive=label != "none", review_reason=QueueReason.POSITIVE if queued else None, alert=alert),
    )


class FakeClock:
    """A settable UTC clock for leases and the dispatcher."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
