"""Classify an uploaded image with the loaded model (the classify page and API).

Responsible for reading an upload safely (a size cap, a pixel cap against decompression
bombs, EXIF orientation applied, any mode converted to RGB) and running the model off
the event loop.
"""

from __future__ import annotations

import io
import warnings
from typing import Annotated

import numpy as np
from fastapi import Depends, File, HTTPException, UploadFile, status
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from monitor.web.auth import Identity, api_user
from monitor.web.context import WebContext, get_ctx

MAX_PIXELS = 40_000_000


class LabelProbability(BaseModel):
    label: str
    probability: float


class ClassifyResult(BaseModel):
    model_id: str
    label: str
    confidence: float
    probabilities: list[LabelProbability]


async def read_upload(upload: UploadFile, *, max_bytes: int) -> np.ndarray:
    """The upload as an RGB uint8 array.

    Raises:
        HTTPException: 413 when larger than ``max_bytes`` or ``MAX_PIXELS``; 415 when it
            is not an image Pillow can read.
    """
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"the image is larger than {max_bytes} bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE,
                                        f"the image has more than {MAX_PIXELS} pixels")
                image = ImageOps.exif_transpose(image).convert("RGB")
                return np.asarray(image, dtype=np.uint8).copy()
    except HTTPException:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                            "not an image that can be read; upload a JPEG, PNG or WebP") from None


async def classify_image(ctx: WebContext, image: np.ndarray) -> ClassifyResult:
    """Run the model on one image in a worker thread.

    Raises:
        HTTPException: 503 when no model is loaded.
    """
    if ctx.classifier is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "no model is loaded in this process")
    prediction = await run_in_threadpool(ctx.classifier.predict, image)
    ranked = sorted(prediction.probabilities.items(), key=lambda kv: -kv[1])
    return ClassifyResult(
        model_id=prediction.model_id, label=prediction.label, confidence=prediction.confidence,
        probabilities=[LabelProbability(label=k, probability=float(v)) for k, v in ranked],
    )


async def classify_upload_api(
    file: Annotated[UploadFile, File(description="a JPEG, PNG or WebP image")],
    ctx: Annotated[WebContext, Depends(get_ctx)],
    _identity: Annotated[Identity, Depends(api_user)],
) -> ClassifyResult:
    """FastAPI dependency behind POST /api/v1/classify."""
    image = await read_upload(file, max_bytes=ctx.config.web.max_upload_bytes)
    return await classify_image(ctx, image)
