"""Fixtures for the source tests: generated clips, camera configs, waiting helpers.

Clips are generated once per session with :func:`monitor.sources.synthetic.make_clip`
(small sizes, so the whole suite stays fast on two cores). The real RTSP server fixture
(``rtsp_server``) lives in tests/conftest.py, shared with the `monitor run` tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from monitor.config import CameraConfig
from monitor.sources.synthetic import make_clip



# -- generated clips ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def clip_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """make(name, **make_clip kwargs) -> path; each distinct clip is encoded once."""
    folder = tmp_path_factory.mktemp("clips")
    cache: dict[tuple[str, tuple[tuple[str, Any], ...]], Path] = {}

    def make(name: str, **kwargs: Any) -> Path:
        kwargs.setdefault("seconds", 10.0)
        kwargs.setdefault("width", 320)
        kwargs.setdefault("height", 180)
        key = (name, tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = make_clip(folder / f"{len(cache)}-{name}", **kwargs)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def clip_25fps(clip_factory: Callable[..., Path]) -> Path:
    """10 s, 25 fps, 320x180, a keyframe every 2 s."""
    return clip_factory("25fps.mp4", fps=25, gop_seconds=2.0)


@pytest.fixture(scope="session")
def clip_ntsc(clip_factory: Callable[..., Path]) -> Path:
    """10 s at 30000/1001 fps, a keyframe every 60 frames (2.002 s)."""
    return clip_factory("ntsc.mp4", fps=Fraction(30000, 1001), gop_seconds=2.0)


def camera_for(location: str | Path, *, camera_id: str = "cam1", **fields: Any) -> CameraConfig:
    """A CameraConfig for a url (str with ://) or a path."""
    text = str(location)
    key = "url" if "://" in text else "path"
    return CameraConfig(id=camera_id, **{key: text}, **fields)


def wait_for(condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``condition`` until it is true or ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


@pytest.fixture
def make_camera() -> Callable[..., CameraConfig]:
    """camera(location, camera_id="cam1", **fields) -> CameraConfig."""
    return camera_for


@pytest.fixture
def wait_until() -> Callable[..., bool]:
    """wait(condition, timeout) -> whether it became true in time."""
    return wait_for
