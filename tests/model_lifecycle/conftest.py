"""Fixtures for the model lifecycle tests: one real fastai training per test session.

``trained`` fine-tunes EfficientNet-Lite0 (local ImageNet weights) on the real photos in
$MONITOR_TEST_DATA/bears for 1 frozen + 1 unfrozen epoch at 128 px (20-60 s on 2 cores,
depending on what else runs) and exports the bundle; every test that needs a trained model
or its fastai learner shares it. Tests that damage a bundle work on a copy. Small synthetic
data sets (coloured squares, made here) serve the CLI's bad-input tests, which need no
real photos.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from lifecycle_helpers import TINY_SIZE, make_image

from monitor.model.train import TrainOptions, TrainResult, train


@pytest.fixture(scope="session")
def bears_dir(data_dir: Path) -> Path:
    """The real bear photos (one folder per class); skips when the shared data is absent."""
    return data_dir / "bears"


@pytest.fixture(scope="session")
def bear_files(bears_dir: Path) -> list[Path]:
    return sorted(bears_dir.glob("*/*.jpg"))


@pytest.fixture(scope="session")
def trained(bears_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """A small real training run on the bear photos, exported as a bundle (once per session)."""
    out = tmp_path_factory.mktemp("trained") / "bears-tiny"
    started = time.perf_counter()
    result = train(TrainOptions(data_dir=bears_dir, out=out, size=TINY_SIZE, epochs=1, freeze_epochs=1, seed=42))
    print(f"\nsession training fixture: {time.perf_counter() - started:.1f} s, accuracy {result.metrics['accuracy']}")
    return result


@pytest.fixture(scope="session")
def learner_pkl(trained: TrainResult, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained learner as fastai's learn.export() writes it (the seed's model.pkl)."""
    path = tmp_path_factory.mktemp("pkl") / "model.pkl"
    trained.learner.export(path)
    return path


@pytest.fixture
def bundle_copy(trained: TrainResult, tmp_path: Path) -> Path:
    """A private copy of the trained bundle that a test may damage."""
    copy = tmp_path / "bundle"
    shutil.copytree(trained.bundle.directory, copy)
    return copy


@pytest.fixture
def colour_data(tmp_path: Path) -> Path:
    """A tiny two-class data set: 8 reddish and 8 bluish images."""
    root = tmp_path / "colours"
    for i in range(8):
        make_image(root / "red" / f"r{i}.jpg", (200, 40, 40), seed=i)
        make_image(root / "blue" / f"b{i}.jpg", (40, 40, 200), seed=100 + i)
    return root


@pytest.fixture(scope="session")
def builtin_cache(model_cache: Path) -> Path:
    """The session's model cache (tests/conftest.py's) with the built-in model built in it."""
    from monitor.model.builtin import ensure_cached

    ensure_cached(model_cache)
    return model_cache
