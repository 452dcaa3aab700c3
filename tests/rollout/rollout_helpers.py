"""Helpers shared by the rollout tests: a controllable clock and data writers.

Kept out of conftest.py so test modules can import them by a unique module name.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

from sqlmodel import Session

from monitor.store import upsert_increments
from monitor.store.tables import LabelHour, ReviewItem, utc_hour

START = datetime(2026, 6, 1, tzinfo=timezone.utc)


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, start: datetime = START) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now

    def set(self, moment: datetime) -> datetime:
        self.now = moment
        return moment


def add_items(
    session: Session,
    *,
    count: int,
    reason: str,
    status: str,
    captured_at: datetime,
    site_id: str = "north",
    camera_id: str = "cam-n1",
    label: str = "grizzly",
    confidence: float = 0.9,
    review_label: str | None = None,
    model_id: str = "sim-model@1",
) -> None:
    """Insert ``count`` review items (no snapshot files: gates never read them); commits."""
    if count <= 0:
        return
    session.add_all(
        ReviewItem(
            site_id=site_id, camera_id=camera_id, captured_at=captured_at, label=label, confidence=confidence,
            probabilities={label: confidence}, model_id=model_id, reason=reason, status=status,
            review_label=review_label, snapshot=f"sim/{uuid.uuid4().hex}.jpg",
            reviewed_at=None if status == "pending" else captured_at,
        )
        for _ in range(count)
    )
    session.commit()


def add_counts(
    session: Session, *, camera_id: str, hour: datetime, label: str, predictions: int, positives: int = 0
) -> None:
    """Add to a camera's hourly label counts; commits."""
    upsert_increments(
        LabelHour,
        [{"camera_id": camera_id, "hour": utc_hour(hour), "label": label, "predictions": predictions,
          "positives": positives}],
        keys=("camera_id", "hour", "label"),
        session=session,
    )
    session.commit()


def start_sites(session: Session, *site_ids: str, at: datetime = START) -> None:
    """Give sites their manual stage row as of ``at``; commits."""
    from rollout import store

    store.ensure_states(site_ids or ("north", "south"), session=session, now=at)
    session.commit()
