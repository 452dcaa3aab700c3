"""Fixtures for the review UI and API: a real database, real snapshots, real users.

Every test gets its own database (``database_url``: SQLite, or PostgreSQL in scripts/test's
second pass) and snapshot folder, two reviewers (alice and bob), and an app built by
``create_web_app`` (no module-level state). ``client`` is FastAPI's
TestClient (the real ASGI app in-process); ``live_server`` serves the same app with
uvicorn on a free port for the browser and for concurrency tests over real HTTP.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from sqlalchemy.engine import Engine

from db_backends import open_database
from monitor.config import MonitorConfig
from monitor.store import SnapshotStore, record_predictions, session_scope
from monitor.store.users import create_api_token, create_user
from monitor.web import WebServer, create_web_app
from review_helpers import CAMERA_PASSWORD, HOSTILE_NAME, PASSWORDS, T0, SignedIn, outcome, sign_in


@pytest.fixture
def web_config(tmp_path: Path, database_url: str) -> MonitorConfig:
    """Two sites and three cameras; one camera has credentials in its URL and one a name
    full of markup."""
    clip = tmp_path / "trail.mp4"
    clip.write_bytes(b"only the path is stored")
    return MonitorConfig(
        database=database_url,  # SQLite, or PostgreSQL with MONITOR_TEST_DATABASE=postgresql
        snapshots=tmp_path / "data" / "snapshots",
        sites=[
            {"id": "north", "name": "North campground", "cameras": [
                {"id": "gate", "name": HOSTILE_NAME, "url": f"rtsp://admin:{CAMERA_PASSWORD}@10.0.0.5/live"},
                {"id": "trail", "name": "Trail", "path": str(clip)},
            ]},
            {"id": "south", "cameras": [{"id": "lake", "url": "rtsp://10.0.0.9/stream"}]},
        ],
    )


@pytest.fixture
def engine(web_config: MonitorConfig) -> Iterator[Engine]:
    engine = open_database(web_config)
    yield engine
    engine.dispose()


@pytest.fixture
def snapshots(web_config: MonitorConfig) -> SnapshotStore:
    return SnapshotStore(Path(web_config.snapshots))


@pytest.fixture
def users(engine: Engine) -> dict[str, int]:
    """alice and bob, with the passwords in PASSWORDS; name -> user id."""
    ids = {}
    with session_scope(engine) as session:
        for name, password in PASSWORDS.items():
            ids[name] = create_user(name, password, session=session).id
    return ids


@pytest.fixture
def api_token(engine: Engine, users: dict[str, int]) -> Callable[[str], str]:
    """api_token(name) -> a new bearer token for that user."""

    def make(name: str) -> str:
        with session_scope(engine) as session:
            token, _ = create_api_token(name, session=session, name="tests")
        return token

    return make


@pytest.fixture
def add_items(engine: Engine, snapshots: SnapshotStore) -> Callable[..., list[int]]:
    """add_items(n, **outcome fields) -> ids of n new review items a minute apart (with
    real JPEG snapshots); ``start`` sets the first capture time."""

    def add(count: int = 1, *, start: datetime = T0, **fields) -> list[int]:
        outcomes = [outcome(captured_at=start + timedelta(minutes=i), seed=i, **fields) for i in range(count)]
        with session_scope(engine) as session:
            return record_predictions(outcomes, session=session, snapshots=snapshots)

    return add


@pytest.fixture
def app(engine: Engine, snapshots: SnapshotStore, web_config: MonitorConfig, users: dict[str, int]):
    return create_web_app(engine=engine, snapshots=snapshots, registry=CollectorRegistry(), config=web_config)


@pytest.fixture
def client(app) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def reviewer(app) -> Iterator[Callable[[str], SignedIn]]:
    """reviewer(name) -> that user signed in on a client of their own (own cookies)."""
    clients: list[TestClient] = []

    def make(name: str) -> SignedIn:
        own = TestClient(app)
        clients.append(own)
        return sign_in(own, name)

    yield make
    for own in clients:
        own.close()


@pytest.fixture
def alice(reviewer) -> SignedIn:
    return reviewer("alice")


@pytest.fixture
def live_server(app) -> Iterator[str]:
    """The app served by uvicorn on a free port; yields its base URL."""
    server = WebServer(app, host="127.0.0.1", port=0)
    port = server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()
