"""Store fixtures: the same tests run on a real SQLite file and on a real PostgreSQL.

``engine`` is built on ``backend_url`` (tests/conftest.py): each backend in turn, a
fresh PostgreSQL schema per test with a non-UTC session time zone (tests/db_backends.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from monitor.config import MonitorConfig
from monitor.store import SnapshotStore, create_engine_for, init_schema, sync_sites_and_cameras
from monitor.types import Frame, Outcome, Prediction, QueueReason, Route

CAMERA_PASSWORD = "s3cr3t-pa55"
CAMERA_TOKEN = "tok-9f8e7d"
LABELS = ("grizzly", "black", "polar", "sloth", "panda", "teddy", "none")


@pytest.fixture
def engine(backend_url: str) -> Iterator[Engine]:
    """A real database with the store's tables, on each backend in turn."""
    engine = create_engine_for(backend_url)
    try:
        init_schema(engine)
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with Session(engine) as session:
        yield session


@pytest.fixture
def snapshots(tmp_path: Path) -> SnapshotStore:
    return SnapshotStore(tmp_path / "snapshots")


@pytest.fixture
def config(tmp_path: Path) -> MonitorConfig:
    """Two sites, three cameras; one URL carries a password and a token."""
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"not really a video; only its path is stored")
    return MonitorConfig(
        sites=[
            {
                "id": "north",
                "name": "North campground",
                "cameras": [
                    {"id": "cam-a", "url": f"rtsp://admin:{CAMERA_PASSWORD}@10.0.0.5:554/live?token={CAMERA_TOKEN}"},
                    {"id": "cam-b", "name": "Trailhead", "path": str(clip)},
                ],
            },
            {"id": "south", "cameras": [{"id": "cam-c", "url": "rtsp://10.0.0.9/stream"}]},
        ]
    )


@pytest.fixture
def camera_secrets() -> tuple[str, str]:
    """The password and token inside cam-a's URL, which must never be stored."""
    return CAMERA_PASSWORD, CAMERA_TOKEN


@pytest.fixture
def synced(session: Session, config: MonitorConfig) -> Session:
    """The session after the config's sites and cameras were written."""
    sync_sites_and_cameras(config, session=session)
    return session


def _make_outcome(
    *,
    site_id: str = "north",
    camera_id: str = "cam-a",
    captured_at: datetime | None = None,
    label: str = "grizzly",
    confidence: float = 0.9,
    reason: QueueReason | None = QueueReason.POSITIVE,
    positive: bool = True,
    media_ts: float | None = None,
    seed: int = 0,
    size: tuple[int, int] = (48, 64),
) -> Outcome:
    """A routed prediction on a small random still."""
    rng = np.random.default_rng(seed)
    others = [name for name in LABELS if name != label]
    rest = (1.0 - confidence) / len(others)
    probabilities = {label: confidence, **{name: rest for name in others}}
    frame = Frame(
        camera_id=camera_id,
        image=rng.integers(0, 256, size=(*size, 3), dtype=np.uint8),
        captured_at=captured_at or datetime(2026, 7, 1, 12, 30, tzinfo=timezone.utc),
        media_ts=media_ts,
    )
    return Outcome(
        site_id=site_id,
        frame=frame,
        prediction=Prediction(label, confidence, probabilities, "test-model@1"),
        route=Route(positive=positive, review_reason=reason),
    )


@pytest.fixture
def make_outcome():
    """Build a routed prediction on a small random still: ``make_outcome(label=..., ...)``."""
    return _make_outcome


def _files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink()) if root.exists() else []


@pytest.fixture
def files_under():
    """List every file (hidden temporary ones included) under a folder."""
    return _files_under
