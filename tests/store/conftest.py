"""Store fixtures: the same tests run on a real SQLite file and on a real PostgreSQL.

PostgreSQL comes from $MONITOR_TEST_POSTGRES_URL (default: the local trust-auth server
on 127.0.0.1:5432, database ``test``). Each test gets its own freshly created schema,
selected with ``search_path``, and the schema is dropped afterwards. When the server
cannot be reached the PostgreSQL half is skipped with the reason, unless
$MONITOR_REQUIRE_POSTGRES is set (CI), where that is a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy
from sqlalchemy.engine import Engine
from sqlmodel import Session

from monitor.config import MonitorConfig
from monitor.store import SnapshotStore, create_engine_for, init_schema, sync_sites_and_cameras
from monitor.store.db import one_line, safe_url
from monitor.types import Frame, Outcome, Prediction, QueueReason, Route

POSTGRES_URL = os.environ.get("MONITOR_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
CAMERA_PASSWORD = "s3cr3t-pa55"
CAMERA_TOKEN = "tok-9f8e7d"
LABELS = ("grizzly", "black", "polar", "sloth", "panda", "teddy", "none")


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[Engine]:
    """An engine on the test database's default schema, for creating and dropping schemas."""
    engine = sqlalchemy.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
    except sqlalchemy.exc.SQLAlchemyError as exc:
        engine.dispose()
        reason = (
            f"PostgreSQL not reachable at {safe_url(POSTGRES_URL)} ({one_line(exc)}); set MONITOR_TEST_POSTGRES_URL"
        )
        if os.environ.get("MONITOR_REQUIRE_POSTGRES"):
            pytest.fail(reason)
        pytest.skip(reason)
    yield engine
    engine.dispose()


def _make_engine(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    if backend == "sqlite":
        return create_engine_for(f"sqlite:///{tmp_path / 'db' / 'monitor.db'}")
    admin: Engine = request.getfixturevalue("postgres_admin")
    schema = f"test_store_{uuid.uuid4().hex[:16]}"
    with admin.begin() as connection:
        connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')

    def drop() -> None:
        with admin.begin() as connection:
            connection.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

    # Finalizers run last-in first-out: the engine is disposed (see the fixture) before
    # the schema is dropped, so no idle connection holds a lock on it.
    request.addfinalizer(drop)
    # A session time zone other than UTC, as on many servers: values must still come
    # back in UTC.
    options = f"-csearch_path={schema} -ctimezone=Asia/Kolkata"
    return create_engine_for(POSTGRES_URL, connect_args={"options": options})


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A real database with the store's tables, on each backend in turn."""
    engine = _make_engine(request.param, request, tmp_path)
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
