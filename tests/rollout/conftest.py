"""Rollout fixtures: real databases (SQLite and PostgreSQL), a fake clock, a rollout context.

Data helpers live in rollout_helpers.py (importable by a unique name).

``engine`` runs a test on each backend in turn (``backend_url``, like the store's tests);
``selected_engine`` only on the backend under test (``database_url``: SQLite, or
PostgreSQL in scripts/test's second pass), for the slower tests. See tests/db_backends.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.engine import Engine

from monitor.config import MonitorConfig
from monitor.store import create_engine_for, init_schema, session_scope, sync_sites_and_cameras
from rollout.config import RolloutConfig
from rollout.promote import RolloutContext
from rollout.store import init_rollout_schema

from rollout_helpers import FakeClock


def make_engine(url: str) -> Engine:
    """A real database with the store's and the rollout's tables."""
    engine = create_engine_for(url)
    init_schema(engine)
    init_rollout_schema(engine)
    return engine


@pytest.fixture
def engine(backend_url: str) -> Iterator[Engine]:
    """Each backend in turn."""
    engine = make_engine(backend_url)
    yield engine
    engine.dispose()


@pytest.fixture
def selected_engine(database_url: str) -> Iterator[Engine]:
    """The backend under test only, for the slower tests."""
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def monitor_config() -> MonitorConfig:
    """Two sites: north (two cameras, one with its own threshold) and south (one camera)."""
    return MonitorConfig(
        sites=[
            {
                "id": "north",
                "cameras": [
                    {"id": "cam-n1", "url": "rtsp://10.0.0.1/stream"},
                    {"id": "cam-n2", "url": "rtsp://10.0.0.2/stream", "threshold": 0.8},
                ],
            },
            {"id": "south", "cameras": [{"id": "cam-s1", "url": "rtsp://10.0.0.3/stream"}]},
        ]
    )


@pytest.fixture
def synced(engine: Engine, monitor_config: MonitorConfig) -> Engine:
    """The engine after the config's sites and cameras were written."""
    with session_scope(engine) as session:
        sync_sites_and_cameras(monitor_config, session=session)
    return engine


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_ctx(monitor_config: MonitorConfig, clock: FakeClock):
    """make_ctx(**rollout_config_overrides, drift_flags=None) -> RolloutContext on the fake clock."""

    def make(drift_flags=None, **overrides) -> RolloutContext:
        base = RolloutContext.from_config(monitor_config, clock=clock, drift_flags=drift_flags)
        config = RolloutConfig.model_validate(overrides) if overrides else base.config
        return RolloutContext(
            config=config, positivity=base.positivity, clock=clock, drift_flags=drift_flags,
            sites=base.sites, model_id=base.model_id,
        )

    return make
