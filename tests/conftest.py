"""Fixtures shared by every test package: the real-data folder and the built-in model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """The real photos and clips: $MONITOR_TEST_DATA, else ../shared/data beside the clone."""
    return Path(os.environ.get("MONITOR_TEST_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = shared_data_dir()
    if not (path / "bears").is_dir():
        pytest.skip(f"real test data not found at {path}; set MONITOR_TEST_DATA to the shared data folder")
    return path


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    """One cache for the built-in model per test session, so its ONNX graph is built once."""
    return Path(os.environ.get("MONITOR_TEST_MODEL_CACHE", tmp_path_factory.mktemp("model-cache")))
