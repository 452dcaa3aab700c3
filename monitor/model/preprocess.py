"""Image preprocessing shared by every model runtime: RGB uint8 pixels -> model input.

One policy, described by :class:`PreprocessSpec` and stored with each model, so that the
ONNX runtime, the torch runtime and the build-time checks feed a model exactly the same
numbers: take the centred square that a "resize the short side to size / crop_pct, then
centre-crop size x size" would keep, resize it to ``size`` x ``size`` with Pillow in one
step, then normalise ``(x / 255 - mean) / std`` into a float32 NCHW batch.

Models trained with fastai saw other validation transforms, so a spec names its resize
policy (``RESIZE_POLICIES``):

* ``short-side-then-centre-crop`` (timm's eval transform; the built-in model);
* ``squash-then-centre-crop``: fastai's ``RandomResizedCrop`` on the validation set (squash
  the whole image to ``round(size / crop_pct)`` square, ignoring its aspect ratio, then
  centre-crop ``size``; ``crop_pct = size / (size + val_xtra pixels)``), and fastai's
  ``Resize(method="squish")`` with ``crop_pct = 1``;
* ``centre-square-then-resize``: fastai's ``Resize(method="crop")`` on the validation set
  (the largest centred square, with fastai's integer rounding, resized to ``size``).

The fastai policies repeat fastai's own Pillow calls in fastai's order, so the model gets
exactly the pixels it was validated on (checked on the real photos: identical arrays).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from PIL import Image

Interpolation = Literal["bicubic", "bilinear", "area"]
# "area" (OpenCV's pixel-area averaging) is for the short-side policy only: on camera
# frames it is 3-4x faster than Pillow (no array->image copy) at the same accuracy
# (built-in model on the 211 shared bear photos: 0.972 with either).
_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
             "area": Image.Resampling.BICUBIC}
RESIZE_POLICY = "short-side-then-centre-crop"
SQUASH_POLICY = "squash-then-centre-crop"
CENTRE_SQUARE_POLICY = "centre-square-then-resize"
RESIZE_POLICIES = (RESIZE_POLICY, SQUASH_POLICY, CENTRE_SQUARE_POLICY)


@dataclass(frozen=True, slots=True)
class PreprocessSpec:
    """How to turn an image of any size into one model input.

    Attributes:
        size: side of the square model input, in pixels.
        crop_pct: share of the short side kept by the centre crop (1.0 keeps all of it).
        interpolation: resampling filter: Pillow's bicubic or bilinear, or "area" (OpenCV
            area averaging for downscales, bicubic for upscales; short-side policy only).
        mean: per-channel (R, G, B) mean subtracted after scaling pixels to [0, 1].
        std: per-channel (R, G, B) standard deviation divided by after that.
        resize: one of ``RESIZE_POLICIES`` (see the module docstring).
    """

    size: int = 224
    crop_pct: float = 0.875
    interpolation: Interpolation = "bicubic"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    resize: str = RESIZE_POLICY
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
        if self.resize not in RESIZE_POLICIES:
            raise ValueError(f"unknown resize policy {self.resize!r}; use one of {list(RESIZE_POLICIES)}")
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
            "resize": self.resize,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PreprocessSpec:
        """Read what :meth:`to_dict` wrote.

        Raises:
            ValueError: a missing or invalid value, or an unknown resize policy.
        """
        try:
            if data.get("resize", RESIZE_POLICY) not in RESIZE_POLICIES:
                raise ValueError(f"unknown resize policy {data.get('resize')!r}")
            return cls(
                size=int(data["size"]),
                crop_pct=float(data["crop_pct"]),
                interpolation=data["interpolation"],
                mean=tuple(data["mean"]),
                std=tuple(data["std"]),
                resize=data.get("resize", RESIZE_POLICY),
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
    """Centre-crop and resize one image to ``spec.size`` x ``spec.size`` by ``spec.resize``.

    For the default policy this equals resizing the short side to ``size / crop_pct`` and
    centre-cropping, but done as one Pillow resize of the source box: no intermediate
    image, less work for large frames.

    Args:
        image: RGB pixels, shape (height, width, 3), dtype uint8, any size.
        spec: the preprocessing policy.

    Returns:
        RGB pixels, shape (size, size, 3), dtype uint8.

    Raises:
        ValueError: ``image`` is not an HxWx3 uint8 array.
    """
    _check_image(image)
    if spec.interpolation == "area" and spec.resize == RESIZE_POLICY:
        return _area_centre_crop(image, spec)
    pil = Image.fromarray(np.ascontiguousarray(image), mode="RGB")
    resample = _RESAMPLE[spec.interpolation]
    size = spec.size
    height, width = image.shape[:2]
    # The fastai policies copy fastai's order of operations (resize then crop, or crop then
    # resize) because a one-step box resize filters across the box edge and differs by a
    # few grey levels from what the model saw in validation.
    if spec.resize == SQUASH_POLICY:
        squashed = round(size / spec.crop_pct)
        offset = (squashed - size) // 2
        resized = pil.resize((squashed, squashed), resample)
        if squashed != size:
            resized = resized.crop((offset, offset, offset + size, offset + size))
    elif spec.resize == CENTRE_SQUARE_POLICY:
        # fastai's Resize(method="crop"), with its float-then-int rounding.
        scale = width / size if width / size < height / size else height / size
        side = int(scale * size)
        left, top = int(0.5 * (width - side)), int(0.5 * (height - side))
        resized = pil.crop((left, top, left + side, top + side)).resize((size, size), resample)
    else:
        side = min(height, width) * spec.crop_pct
        left = (width - side) / 2.0
        top = (height - side) / 2.0
        resized = pil.resize((size, size), resample, box=(left, top, left + side, top + side))
    return np.asarray(resized, dtype=np.uint8)


def _area_centre_crop(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    import cv2  # imported on first use: only the built-in model's policy needs it

    height, width = image.shape[:2]
    side = min(height, width) * spec.crop_pct
    top, left = round((height - side) / 2.0), round((width - side) / 2.0)
    square = image[top:top + round(side), left:left + round(side)]
    shrinking = square.shape[0] >= spec.size
    return cv2.resize(square, (spec.size, spec.size),
                      interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)


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
