"""Rollout fixtures: real databases (SQLite and PostgreSQL), a fake clock, a rollout context.

Data helpers live in rollout_helpers.py (importable by a unique name).

Database tests run on a real SQLite file and on a real PostgreSQL (a fresh schema per
test, dropped afterwards), like the store's tests. PostgreSQL comes from
$MONITOR_TEST_POSTGRES_URL (default: the local trust-auth server, database ``test``);
when it cannot be reached that half is skipped with the reason, unless
$MONITOR_REQUIRE_POSTGRES is set (CI), where that is a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy.engine import Engine

from monitor.config import MonitorConfig
from monitor.store import create_engine_for, init_schema, session_scope, sync_sites_and_cameras
from monitor.store.db import one_line, safe_url
from rollout.config import RolloutConfig
from rollout.promote import RolloutContext
from rollout.store import init_rollout_schema

from rollout_helpers import FakeClock

POSTGRES_URL = os.environ.get("MONITOR_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[Engine]:
    engine = sqlalchemy.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
    except sqlalchemy.exc.SQLAlchemyError as exc:
        engine.dispose()
        reason = f"PostgreSQL not reachable at {safe_url(POSTGRES_URL)} ({one_line(exc)}); set MONITOR_TEST_POSTGRES_URL"
        if os.environ.get("MONITOR_REQUIRE_POSTGRES"):
            pytest.fail(reason)
        pytest.skip(reason)
    yield engine
    engine.dispose()


def make_engine(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    """A real database with the store's and the rollout's tables."""
    if backend == "sqlite":
        engine = create_engine_for(f"sqlite:///{tmp_path / 'db' / 'monitor.db'}")
    else:
        admin: Engine = request.getfixturevalue("postgres_admin")
        schema = f"test_rollout_{uuid.uuid4().hex[:16]}"
        with admin.begin() as connection:
            connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')

        def drop() -> None:
            with admin.begin() as connection:
                connection.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

        request.addfinalizer(drop)
        engine = create_engine_for(POSTGRES_URL, connect_args={"options": f"-csearch_path={schema} -ctimezone=Asia/Kolkata"})
    init_schema(engine)
    init_rollout_schema(engine)
    return engine


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """Each backend in turn."""
    engine = make_engine(request.param, request, tmp_path)
    yield engine
    engine.dispose()


@pytest.fixture
def sqlite_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """SQLite only, for the slower tests whose logic does not depend on the backend."""
    engine = make_engine("sqlite", request, tmp_path)
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
