"""Bulk writes (monitor.store.bulk), on SQLite and PostgreSQL: the recording hot path's two shapes."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select
from sqlalchemy.exc import StatementError
from sqlmodel import Session

from monitor.store.bulk import add_counts, insert_rows
from monitor.store.cluster_tables import SampleRow
from monitor.store.tables import LabelHour, ReviewItem

T0 = datetime(2026, 5, 1, 10, 0, tzinfo=timezone(timedelta(hours=2)))  # 08:00 UTC
SAMPLES = SampleRow.__table__
LABEL_HOURS = LabelHour.__table__
ITEMS = ReviewItem.__table__


def _item(snapshot: str, **changes) -> dict:
    row = {
        "site_id": "north", "camera_id": "cam-a", "captured_at": T0, "media_ts": None, "label": "grizzly",
        "confidence": 0.9, "probabilities": {"grizzly": 0.9, "none": 0.1}, "model_id": "m@1", "crop": None,
        "ood_reasons": [], "review_label": None, "reviewed_at": None, "reason": "positive", "status": "pending",
        "snapshot": snapshot, "created_at": T0, "version": 0,
    }
    return {**row, **changes}


def test_insert_rows_returns_every_new_row_and_keeps_every_value(synced: Session) -> None:
    rows = [
        _item("a.jpg"),
        _item("b.jpg", crop=[1, 2, 30, 30], ood_reasons=["dark", "blur"], media_ts=12.5, label="none",
              probabilities={"grizzly": 0.05, "none": 0.95}, confidence=0.95, captured_at=T0 + timedelta(seconds=1)),
    ]
    inserted = dict(insert_rows(ITEMS, rows, session=synced, returning=("snapshot", "id")))
    synced.commit()
    assert sorted(inserted) == ["a.jpg", "b.jpg"] and len(set(inserted.values())) == 2
    stored = {item.snapshot: item for item in synced.exec(select(ReviewItem)).scalars()}
    b = stored["b.jpg"]
    assert b.id == inserted["b.jpg"]
    assert (b.crop, b.ood_reasons, b.media_ts, b.label) == ([1, 2, 30, 30], ["dark", "blur"], 12.5, "none")
    assert b.probabilities == {"grizzly": 0.05, "none": 0.95}
    assert b.captured_at == T0 + timedelta(seconds=1) and b.captured_at.tzinfo == timezone.utc
    assert stored["a.jpg"].crop is None and stored["a.jpg"].ood_reasons == []


def test_insert_rows_skips_rows_whose_key_exists_and_returns_only_the_new(synced: Session) -> None:
    key = ("camera_id", "captured_at", "origin")

    def sample(seconds: int) -> dict:
        return {"camera_id": "cam-a", "captured_at": T0 + timedelta(seconds=seconds), "origin": "",
                "worker": "w1", "recorded_at": T0}

    first = insert_rows(SAMPLES, [sample(0), sample(1)], session=synced, returning=key, skip_existing=key)
    second = insert_rows(SAMPLES, [sample(1), sample(2)], session=synced, returning=key, skip_existing=key)
    synced.commit()
    assert len(first) == 2
    assert [tuple(row) for row in second] == [("cam-a", T0 + timedelta(seconds=2), "")]
    assert len(synced.exec(select(SampleRow)).all()) == 3


def test_add_counts_sums_repeated_keys_and_adds_to_stored_rows(synced: Session) -> None:
    hour = T0.replace(minute=0)
    rows = [
        {"camera_id": "cam-a", "hour": hour, "label": "grizzly", "predictions": 1, "positives": 1},
        {"camera_id": "cam-a", "hour": hour, "label": "grizzly", "predictions": 1, "positives": 0},
        {"camera_id": "cam-b", "hour": hour, "label": "none", "predictions": 1, "positives": 0},
    ]
    add_counts(LABEL_HOURS, rows, keys=("camera_id", "hour", "label"), session=synced)
    add_counts(LABEL_HOURS, rows[:1], keys=("camera_id", "hour", "label"), session=synced)
    synced.commit()
    stored = {(r.camera_id, r.label): (r.predictions, r.positives) for r in synced.exec(select(LabelHour)).scalars()}
    assert stored == {("cam-a", "grizzly"): (3, 2), ("cam-b", "none"): (1, 0)}


def test_naive_datetimes_are_refused_before_anything_is_written(synced: Session) -> None:
    # SQLAlchemy wraps the type's ValueError on SQLite; the message is the same.
    with pytest.raises((ValueError, StatementError), match="timezone-aware"):
        insert_rows(ITEMS, [_item("a.jpg", captured_at=datetime(2026, 5, 1, 10, 0))], session=synced)
    synced.rollback()
    assert synced.exec(select(ReviewItem)).all() == []


def test_nothing_to_write_sends_no_statement(synced: Session) -> None:
    assert insert_rows(ITEMS, [], session=synced, returning=("id",)) == []
    add_counts(LABEL_HOURS, [], keys=("camera_id", "hour", "label"), session=synced)
