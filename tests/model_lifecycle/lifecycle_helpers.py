"""Helpers shared by the model lifecycle tests (imported by name: tests/ has no __init__.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
TINY_SIZE = 128


def make_image(path: Path, colour: tuple[int, int, int], seed: int, size: tuple[int, int] = (96, 72)) -> Path:
    """A noisy image of one colour, saved as JPEG (or PNG by suffix)."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour, dtype=np.int16) + rng.integers(-40, 40, (size[1], size[0], 3)), 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path
