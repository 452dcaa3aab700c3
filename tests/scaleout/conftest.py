"""Scale-out fixtures: fresh databases on both backends, synced sites and cameras, routed stills.

``scaleout_config`` and ``engine`` are on ``backend_url``: SQLite and PostgreSQL in turn;
``postgres_url`` is PostgreSQL only, for what only makes sense with many processes on
one server (both from tests/conftest.py, see tests/db_backends.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from db_backends import open_database
from monitor.config import MonitorConfig
from monitor.store import SnapshotStore
from monitor.types import Outcome
from scaleout_helpers import CAMERAS, FakeClock, routed


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
    engine = open_database(scaleout_config)
    yield engine
    engine.dispose()


@pytest.fixture
def snapshots(tmp_path: Path) -> SnapshotStore:
    return SnapshotStore(tmp_path / "snapshots")


@pytest.fixture
def make_routed() -> Callable[..., Outcome]:
    return routed


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def files_in() -> Callable[[Path], list[Path]]:
    """files_in(folder) -> every file under it (hidden temporary ones included)."""
    return lambda root: sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []
