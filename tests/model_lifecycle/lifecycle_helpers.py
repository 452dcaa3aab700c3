"""Helpers shared by the model lifecycle tests (imported by name: tests/ has no __init__.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
TINY_SIZE = 128


def run_monitor(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
                timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the `monitor` CLI as a user would, in a fresh process."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "monitor.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def make_image(path: Path, colour: tuple[int, int, int], seed: int, size: tuple[int, int] = (96, 72)) -> Path:
    """A noisy image of one colour, saved as JPEG (or PNG by suffix)."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour, dtype=np.int16) + rng.integers(-40, 40, (size[1], size[0], 3)), 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path
