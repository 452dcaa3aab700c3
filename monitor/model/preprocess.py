"""Image preprocessing shared by every model runtime: RGB uint8 pixels -> model input.

One policy, described by :class:`PreprocessSpec` and stored with each model, so that the
ONNX runtime, the torch runtime and the build-time checks feed a model exactly the same
numbers: take the centred square that a "resize the short side to size / crop_pct, then
centre-crop size x size" would keep, resize it to ``size`` x ``size`` with Pillow in one
step, then normalise ``(x / 255 - mean) / std`` into a float32 NCHW batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from PIL import Image

Interpolation = Literal["bicubic", "bilinear"]
_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
RESIZE_POLICY = "short-side-then-centre-crop"


@dataclass(frozen=True, slots=True)
class PreprocessSpec:
    """How to turn an image of any size into one model input.

    Attributes:
        size: side of the square model input, in pixels.
        crop_pct: share of the short side kept by the centre crop (1.0 keeps all of it).
        interpolation: Pillow resampling filter used for the resize.
        mean: per-channel (R, G, B) mean subtracted after scaling pixels to [0, 1].
        std: per-channel (R, G, B) standard deviation divided by after that.
    """

    size: int = 224
    crop_pct: float = 0.875
    interpolation: Interpolation = "bicubic"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    # Precomputed so that normalisation is one multiply-add per pixel.
    _scale: np.ndarray = field(init=False, repr=False, compare=False)
    _offset: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 8:
            raise ValueError(f"PreprocessSpec.size must be an int >= 8, got {self.size!r}")
        if not 0.0 < self.crop_pct <= 1.0:
            raise ValueError(f"PreprocessSpec.crop_pct must be in (0, 1], got {self.crop_pct!r}")
        if self.interpolation not in _RESAMPLE:
            raise ValueError(
                f"PreprocessSpec.interpolation must be one of {sorted(_RESAMPLE)}, "
                f"got {self.interpolation!r}"
            )
        mean = tuple(float(v) for v in self.mean)
        std = tuple(float(v) for v in self.std)
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError("PreprocessSpec.mean and .std need 3 values each, std > 0")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        std_arr = np.asarray(std, dtype=np.float32)
        object.__setattr__(self, "_scale", (1.0 / (255.0 * std_arr)).reshape(1, 3, 1, 1))
        object.__setattr__(
            self, "_offset", (-np.asarray(mean, dtype=np.float32) / std_arr).reshape(1, 3, 1, 1)
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description, stored next to a model so that it is fed the same way."""
        return {
            "size": self.size,
            "crop_pct": self.crop_pct,
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
            "resize": RESIZE_POLICY,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PreprocessSpec:
        """Read what :meth:`to_dict` wrote.

        Raises:
            ValueError: a missing or invalid value, or an unknown resize policy.
        """
        try:
            if data.get("resize", RESIZE_POLICY) != RESIZE_POLICY:
                raise ValueError(f"unknown resize policy {data.get('resize')!r}")
            return cls(
                size=int(data["size"]),
                crop_pct=float(data["crop_pct"]),
                interpolation=data["interpolation"],
                mean=tuple(data["mean"]),
                std=tuple(data["std"]),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"invalid preprocessing description: {exc!r}") from None


def _check_image(image: np.ndarray) -> None:
    if (
        not isinstance(image, np.ndarray)
        or image.ndim != 3
        or image.shape[2] != 3
        or image.dtype != np.uint8
        or image.shape[0] < 1
        or image.shape[1] < 1
    ):
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got shape {shape} dtype {dtype}")


def resize_centre_crop(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Centre-crop and resize one image to ``spec.size`` x ``spec.size``.

    Equivalent to resizing the short side to ``size / crop_pct`` and centre-cropping,
    but done as one Pillow resize of the source box: no intermediate image, less work
    for large frames.

    Args:
        image: RGB pixels, shape (height, width, 3), dtype uint8, any size.
        spec: the preprocessing policy.

    Returns:
        RGB pixels, shape (size, size, 3), dtype uint8.

    Raises:
        ValueError: ``image`` is not an HxWx3 uint8 array.
    """
    _check_image(image)
    height, width = image.shape[:2]
    side = min(height, width) * spec.crop_pct
    left = (width - side) / 2.0
    top = (height - side) / 2.0
    pil = Image.fromarray(np.ascontiguousarray(image), mode="RGB")
    resized = pil.resize(
        (spec.size, spec.size),
        _RESAMPLE[spec.interpolation],
        box=(left, top, left + side, top + side),
    )
    return np.asarray(resized, dtype=np.uint8)


def normalise(crops: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Turn a stack of uint8 NHWC crops into the normalised float32 NCHW model input.

    Args:
        crops: shape (N, size, size, 3), dtype uint8.
        spec: the preprocessing policy (mean, std).

    Returns:
        C-contiguous float32 array of shape (N, 3, size, size).
    """
    batch = crops.transpose(0, 3, 1, 2).astype(np.float32, order="C")
    batch *= spec._scale
    batch += spec._offset
    return batch


def preprocess_batch(images: Sequence[np.ndarray], spec: PreprocessSpec) -> np.ndarray:
    """Preprocess RGB uint8 images of any sizes into one model input batch.

    Args:
        images: RGB uint8 arrays, each (height, width, 3); may be empty.
        spec: the preprocessing policy.

    Returns:
        float32 array of shape (len(images), 3, size, size).

    Raises:
        ValueError: an image is not an HxWx3 uint8 array.
    """
    crops = np.empty((len(images), spec.size, spec.size, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        crops[i] = resize_centre_crop(image, spec)
    return normalise(crops, spec)
