"""Scale-out fixtures: fresh databases on both backends, synced sites and cameras, routed stills.

``backend_url`` is parametrized over SQLite and PostgreSQL (a fresh schema per test,
see tests/db_backends.py); ``postgres_url`` is PostgreSQL only, for what only makes
sense with many processes on one server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy.engine import Engine

from db_backends import sqlite_url
from monitor.config import MonitorConfig
from monitor.store import SnapshotStore, create_engine_for, init_schema, session_scope, sync_sites_and_cameras
from monitor.types import Frame, Outcome, Prediction, QueueReason, Route

LABELS = ("grizzly", "black", "polar", "sloth", "panda", "teddy", "none")
T0 = datetime(2026, 7, 1, 12, 0, tzinfo=timezone.utc)
CAMERAS = {"north": ["gate", "trail", "creek"], "south": ["lake"]}


@pytest.fixture(params=["sqlite", "postgresql"])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return sqlite_url(tmp_path)
    schemas = request.getfixturevalue("postgres_schemas")
    url = schemas.create("scaleout")
    request.addfinalizer(lambda: schemas.drop(url))
    return url


@pytest.fixture
def postgres_url(request: pytest.FixtureRequest, postgres_schemas) -> str:
    url = postgres_schemas.create("scaleout")
    request.addfinalizer(lambda: postgres_schemas.drop(url))
    return url


@pytest.fixture
def scaleout_config(backend_url: str, tmp_path: Path) -> MonitorConfig:
    return MonitorConfig(
        database=backend_url,
        snapshots=tmp_path / "snapshots",
        sites=[{"id": site, "cameras": [{"id": c, "url": f"rtsp://10.0.0.{i}/{c}"} for i, c in enumerate(cams)]}
               for site, cams in CAMERAS.items()],
    )


@pytest.fixture
def engine(scaleout_config: MonitorConfig) -> Iterator[Engine]:
    """The backend's database with every table and the config's sites and cameras."""
    engine = create_engine_for(scaleout_config.database)
    init_schema(engine)
    with session_scope(engine) as session:
        sync_sites_and_cameras(scaleout_config, session=session)
    yield engine
    engine.dispose()


@pytest.fixture
def snapshots(tmp_path: Path) -> SnapshotStore:
    return SnapshotStore(tmp_path / "snapshots")


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


@pytest.fixture
def make_routed() -> Callable[..., Outcome]:
    return routed


class FakeClock:
    """A settable UTC clock for leases and the dispatcher."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def files_in() -> Callable[[Path], list[Path]]:
    """files_in(folder) -> every file under it (hidden temporary ones included)."""
    return lambda root: sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []
