"""Classify image files with any classifier: the seed's ``classify_image``, for the CLI and the web UI.

One image that cannot be read does not stop the others: each file gets a
:class:`FileResult` with either a prediction or a one-line error. Images are read the way
a person sees them (EXIF orientation applied), as RGB, and classified in batches.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from monitor.model.base import Classifier
from monitor.model.verify import IMAGE_EXTENSIONS
from monitor.types import Prediction

DEFAULT_BATCH = 16


class ImageReadError(ValueError):
    """A file is missing, not an image, or a corrupt one; the message is one line."""


@dataclass(frozen=True, slots=True)
class FileResult:
    """The outcome for one file.

    Attributes:
        path: the file as given.
        prediction: the prediction, or None when the file could not be classified.
        error: why not, in one line; None on success.
    """

    path: str
    prediction: Prediction | None = None
    error: str | None = None

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict (probabilities sorted from most to least likely)."""
        if self.prediction is None:
            return {"file": self.path, "error": self.error}
        p = self.prediction
        ranked = sorted(p.probabilities.items(), key=lambda kv: -kv[1])
        return {
            "file": self.path,
            "label": p.label,
            "confidence": round(p.confidence, 6),
            "probabilities": {label: round(prob, 6) for label, prob in ranked},
            "model_id": p.model_id,
        }


def read_image(source: str | Path | bytes | BinaryIO) -> np.ndarray:
    """Decode an image file (path, bytes or file object) into an HxWx3 uint8 RGB array.

    EXIF orientation is applied, so a portrait phone photo is classified upright.

    Args:
        source: a path, the file's bytes, or a binary file object (e.g. an upload).

    Returns:
        RGB pixels.

    Raises:
        ImageReadError: missing file, not an image, or corrupt image data.
    """
    name = str(source) if isinstance(source, str | Path) else "image"
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        with Image.open(source) as image:
            image.load()
            return np.asarray(ImageOps.exif_transpose(image).convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise ImageReadError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise ImageReadError(f"{name}: is a folder, not an image") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{name}: not an image Pillow can read (wrong file type?)") from None
    except (OSError, SyntaxError, ValueError) as exc:  # truncated/corrupt data, Pillow's decoder errors
        detail = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise ImageReadError(f"{name}: corrupt image ({detail})") from None


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files stay as given; a folder becomes its image files (recursively, sorted).

    Args:
        paths: files and folders.

    Returns:
        The files to classify, in order.
    """
    expanded: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            expanded += sorted(
                p for p in path.rglob("*")
                if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
            )
        else:
            expanded.append(path)
    return expanded


def classify_images(images: Sequence[np.ndarray], classifier: Classifier, *, batch_size: int = DEFAULT_BATCH) -> list[Prediction]:
    """Classify decoded RGB images in batches.

    Args:
        images: HxWx3 uint8 RGB arrays.
        classifier: any model.
        batch_size: images per model call.

    Returns:
        One prediction per image, in order.

    Raises:
        ModelError: the model failed.
    """
    predictions: list[Prediction] = []
    for start in range(0, len(images), batch_size):
        predictions += classifier.predict_batch(images[start : start + batch_size])
    return predictions


def classify_files(
    paths: Iterable[str | Path],
    classifier: Classifier,
    *,
    batch_size: int = DEFAULT_BATCH,
) -> list[FileResult]:
    """Read and classify image files; unreadable files get an error instead of stopping the rest.

    Files are decoded one batch at a time, so memory stays bounded for long lists.

    Args:
        paths: image files (use :func:`expand_paths` for folders).
        classifier: any model.
        batch_size: images per model call.

    Returns:
        One result per path, in order.

    Raises:
        ModelError: the model failed.
    """
    paths = [str(p) for p in paths]
    results: list[FileResult] = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        decoded: list[tuple[int, np.ndarray]] = []
        chunk_results: list[FileResult | None] = [None] * len(chunk)
        for index, path in enumerate(chunk):
            try:
                decoded.append((index, read_image(path)))
            except ImageReadError as exc:
                chunk_results[index] = FileResult(path, error=str(exc))
        predictions = classifier.predict_batch([image for _, image in decoded]) if decoded else []
        for (index, _), prediction in zip(decoded, predictions, strict=True):
            chunk_results[index] = FileResult(chunk[index], prediction=prediction)
        results += [r for r in chunk_results if r is not None]
    return results
