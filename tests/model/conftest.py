"""Fixtures for the model tests: one real build of the built-in model per test session.

Building exports the ONNX graph with torch (about 10 s on 2 cores), so it happens once per
session, in the ``model_cache`` folder of tests/conftest.py (other test packages share it);
tests that damage a cache work on a copy of it. The real bear
photos are read from $MONITOR_TEST_DATA (default ../shared/data next to the repository);
tests that need them skip with the reason when the folder is absent.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from monitor.model import load_model
from monitor.model.builtin import CACHE_SUBDIR, MODEL_REF, ensure_cached
from monitor.model.runtime_onnx import OnnxClassifier

DATA_ENV = "MONITOR_TEST_DATA"
BEAR_CLASSES = ("black", "grizzly", "panda", "polar", "sloth", "teddy", "none")


def _data_dir() -> Path:
    return Path(os.environ.get(DATA_ENV) or Path(__file__).parents[2].parent / "shared" / "data")


def _read_rgb(path: Path) -> np.ndarray:
    """A photo as an HxWx3 uint8 RGB array, upright as a viewer shows it."""
    with Image.open(path) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


@pytest.fixture(scope="session")
def read_rgb() -> Callable[[Path], np.ndarray]:
    """Reads a photo file as an HxWx3 uint8 RGB array."""
    return _read_rgb


@pytest.fixture(scope="session")
def bear_photos() -> dict[str, list[Path]]:
    """class -> sorted photo paths under <data>/bears/<class>/; skips if the folder is absent."""
    root = _data_dir() / "bears"
    if not root.is_dir():
        pytest.skip(f"real bear photos not found at {root}; set {DATA_ENV} to the shared data folder")
    photos = {name: sorted((root / name).glob("*.jpg")) for name in BEAR_CLASSES}
    missing = [name for name, paths in photos.items() if not paths]
    if missing:
        pytest.skip(f"no photos for classes {missing} under {root}; the shared data folder is incomplete")
    return photos


_BUILD_SECONDS = pytest.StashKey[float]()


@pytest.fixture(scope="session")
def model_cache(model_cache: Path, request: pytest.FixtureRequest) -> Path:
    """The session's model cache folder (tests/conftest.py's), with the built-in model in it.

    The first test that needs it pays for the one real build of the session.
    """
    started = time.perf_counter()
    ensure_cached(model_cache)
    request.config.stash[_BUILD_SECONDS] = time.perf_counter() - started
    return model_cache


@pytest.fixture(scope="session")
def build_seconds(model_cache: Path, request: pytest.FixtureRequest) -> float:
    """How long making the session's cache took (a build, or a reuse if it already existed)."""
    return request.config.stash[_BUILD_SECONDS]


@pytest.fixture(scope="session")
def classifier(model_cache: Path) -> OnnxClassifier:
    model = load_model(MODEL_REF, cache_dir=model_cache)
    assert isinstance(model, OnnxClassifier)
    return model


@pytest.fixture(scope="session")
def torch_model(model_cache: Path):
    """The same model in PyTorch eager mode (the reference the ONNX graph must match)."""
    from monitor.model.builtin import build_torch_model

    return build_torch_model()


@pytest.fixture
def cache_copy(model_cache: Path, tmp_path: Path) -> Path:
    """A private copy of the session cache that a test may damage."""
    copy = tmp_path / "cache"
    shutil.copytree(model_cache / CACHE_SUBDIR, copy / CACHE_SUBDIR)
    return copy


@pytest.fixture(scope="session")
def synthetic_images() -> list[np.ndarray]:
    """Images of awkward sizes and content that need no data folder."""
    rng = np.random.default_rng(7)
    ramp = np.linspace(0, 255, 333, dtype=np.float32)
    gradient = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], 255 - ramp[None, :]), axis=-1)
    return [
        rng.integers(0, 256, size=(480, 640, 3), dtype=np.uint8),
        gradient.astype(np.uint8),
        np.full((50, 900, 3), 200, dtype=np.uint8),  # very wide
        rng.integers(0, 256, size=(1080, 17, 3), dtype=np.uint8),  # very tall and thin
        np.zeros((1, 1, 3), dtype=np.uint8),  # smallest possible
    ]


@pytest.fixture(scope="session")
def mixed_images(synthetic_images: list[np.ndarray]) -> list[np.ndarray]:
    """Synthetic images plus one real photo of each class when the data folder exists."""
    root = _data_dir() / "bears"
    firsts = [min((root / name).glob("*.jpg"), default=None) for name in BEAR_CLASSES]
    return [*(_read_rgb(path) for path in firsts if path is not None), *synthetic_images]
