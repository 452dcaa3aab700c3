"""Generated video clips whose frames carry their own frame index.

Tests and benchmarks need clips with known frame timestamps, and `monitor run` with no
config needs something to watch. :func:`make_clip` encodes an H.264 clip with PyAV in
which every frame shows its index as a row of 16 large black/white blocks (a binary
number, most significant bit first) above some moving content; :func:`read_stamp` reads
the index back from a decoded (and possibly resized) image. The blocks are big and flat,
so they survive lossy compression and scaling. :func:`make_demo_clip` renders a calmer
scene for the demo camera.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.frame import PictureType

STAMP_BITS = 16
# The stamp band is this share of the frame height; the blocks span the full width.
_STAMP_BAND = 1 / 8
# Only the middle of each block is read back, so that blur and scaling at block edges
# (and chroma subsampling) cannot flip a bit.
_READ_MARGIN = 0.3

# (frame index, seconds) -> RGB (H, W, 3) or yuv420p planes (H * 3 / 2, W), uint8
FramePainter = Callable[[int, float], np.ndarray]


def make_clip(
    path: str | Path,
    *,
    seconds: float,
    fps: float | Fraction = 25,
    width: int = 1280,
    height: int = 720,
    gop_seconds: float = 2.0,
    codec: str = "libx264",
    stamp_index: bool = True,
    creation_time: datetime | None = None,
    fragmented: bool = False,
    keyframes_at: Collection[int] = (),
) -> Path:
    """Encode a clip whose frames show their own index as 16 black/white blocks.

    The container follows the file suffix (.mp4, .mkv, .ts, ...). Keyframes come exactly
    every ``gop_seconds`` (scene-cut keyframes are disabled), so a test knows where they are.

    Args:
        path: the file to write (atomically: it appears complete or not at all); its
            parent folder must exist.
        seconds: clip length; the clip has ``round(seconds * fps)`` frames.
        fps: frame rate; a Fraction such as ``Fraction(30000, 1001)`` for NTSC rates.
        width: frame width in pixels (even).
        height: frame height in pixels (even).
        gop_seconds: keyframe interval in seconds.
        codec: encoder name known to FFmpeg (libx264, mpeg4, ...).
        stamp_index: draw the frame index; without it the frames only show moving content.
        creation_time: written as the container's ``creation_time`` metadata when given.
        fragmented: for .mp4, write a fragmented MP4 (moov first, one fragment per
            keyframe) whose readable prefix survives truncation, like many cameras write.
        keyframes_at: frame indices forced to be keyframes too (x264/x265 only), for an
            irregular keyframe interval; with a long ``gop_seconds`` they are the only ones.

    Returns:
        ``path`` as a Path.

    Raises:
        ValueError: a size or duration that cannot be encoded.
        av.FFmpegError: the encoder or muxer failed.
    """
    rate = Fraction(fps).limit_denominator(100_000)
    frame_count = round(seconds * rate)
    if frame_count < 1 or width < 32 or height < 32 or width % 2 or height % 2:
        raise ValueError(
            f"cannot encode {seconds}s at {width}x{height}: need >= 1 frame and even sizes >= 32"
        )
    if stamp_index and frame_count >= 2**STAMP_BITS:
        raise ValueError(f"a stamped clip holds at most {2**STAMP_BITS - 1} frames, asked {frame_count}")
    painter = _stamped_painter(width, height) if stamp_index else _moving_painter(width, height)
    gop = max(1, round(gop_seconds * rate))
    encoding = _Encoding(rate, width, height, gop, codec, creation_time, fragmented, frozenset(keyframes_at))
    _encode(Path(path), painter, frame_count, encoding)
    return Path(path)


def make_demo_clip(path: str | Path, *, seconds: float = 60.0, width: int = 640, height: int = 360) -> Path:
    """Encode the demo camera's clip: a slow sunset over rolling hills with a walking bear.

    Args:
        path: the file to write (.mp4).
        seconds: clip length.
        width: frame width (even).
        height: frame height (even).

    Returns:
        ``path`` as a Path.

    Raises:
        av.FFmpegError: the encoder or muxer failed.
    """
    rate = Fraction(25)
    _encode(Path(path), _demo_painter(width, height), round(seconds * rate), _Encoding(rate, width, height, gop=50))
    return Path(path)


def read_stamp(image: np.ndarray) -> int:
    """Read back the frame index drawn by :func:`make_clip`.

    Args:
        image: an HxWx3 RGB uint8 image of a stamped frame, at any scale.

    Returns:
        The frame index.

    Raises:
        ValueError: the image is too small to hold a stamp.
    """
    height, width = image.shape[:2]
    band = max(1, int(height * _STAMP_BAND))
    cell = width / STAMP_BITS
    if cell < 2 or band < 2:
        raise ValueError(f"a {width}x{height} image is too small to read a frame stamp")
    gray = image[:band].mean(axis=2)
    y0, y1 = int(band * _READ_MARGIN), max(int(band * (1 - _READ_MARGIN)), int(band * _READ_MARGIN) + 1)
    value = 0
    for bit in range(STAMP_BITS):
        x0 = int(cell * (bit + _READ_MARGIN))
        x1 = max(int(cell * (bit + 1 - _READ_MARGIN)), x0 + 1)
        value = (value << 1) | int(gray[y0:y1, x0:x1].mean() > 127)
    return value


@dataclass(frozen=True, slots=True)
class _Encoding:
    """How to encode a clip: everything but the pictures."""

    rate: Fraction
    width: int
    height: int
    gop: int
    codec: str = "libx264"
    creation_time: datetime | None = None
    fragmented: bool = False
    keyframes_at: frozenset[int] = frozenset()


def _encode(path: Path, painter: FramePainter, frame_count: int, encoding: _Encoding) -> None:
    # Written beside the target and renamed at the end, so that an interrupted run never
    # leaves a half-written clip that a later run would take for a finished one.
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        _write(partial, painter, frame_count, encoding)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _write(path: Path, painter: FramePainter, frame_count: int, encoding: _Encoding) -> None:
    options = {"movflags": "frag_keyframe+empty_moov+default_base_moof"} if encoding.fragmented else {}
    with av.open(str(path), mode="w", options=options) as container:
        if encoding.creation_time is not None:
            stamp = encoding.creation_time.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            container.metadata["creation_time"] = stamp
        stream = container.add_stream(
            encoding.codec, rate=encoding.rate, options=_encoder_options(encoding.codec, encoding.gop)
        )
        if not isinstance(stream, av.VideoStream):
            raise ValueError(f"{encoding.codec} is not a video encoder")
        stream.width, stream.height, stream.pix_fmt = encoding.width, encoding.height, "yuv420p"
        # Frame-exact timestamps: one tick per frame.
        stream.codec_context.time_base = 1 / encoding.rate
        for index in range(frame_count):
            pixels = painter(index, float(index / encoding.rate))
            # Painters return RGB (H, W, 3) or yuv420p planes stacked as (H * 3 / 2, W).
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24" if pixels.ndim == 3 else "yuv420p")
            frame.pts = index
            if index in encoding.keyframes_at:
                frame.pict_type = PictureType.I
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def _encoder_options(codec: str, gop: int) -> dict[str, str]:
    options = {"g": str(gop)}
    if codec in ("libx264", "libx265"):
        # Fixed keyframe grid (no scene cuts) and the fastest preset: clips are test data.
        params = f"keyint={gop}:min-keyint={gop}:scenecut=0"
        options.update({"preset": "ultrafast", "x264-params" if codec == "libx264" else "x265-params": params})
        options["forced-idr"] = "1"  # a forced keyframe is a real (IDR) keyframe
    return options


def _stamped_painter(width: int, height: int) -> FramePainter:
    moving = _moving_painter(width, height)
    band = int(height * _STAMP_BAND)
    cell_edges = [round(width * bit / STAMP_BITS) for bit in range(STAMP_BITS + 1)]

    def paint(index: int, t: float) -> np.ndarray:
        planes = moving(index, t)
        # Luma only: the chroma under the band is neutral, so the blocks decode to grey levels.
        for bit in range(STAMP_BITS):
            on = (index >> (STAMP_BITS - 1 - bit)) & 1
            planes[:band, cell_edges[bit]:cell_edges[bit + 1]] = _Y_WHITE if on else _Y_BLACK
        return planes

    return paint


_Y_BLACK, _Y_WHITE, _NEUTRAL = 16, 235, 128


def _moving_painter(width: int, height: int) -> FramePainter:
    """A scrolling stripe pattern with a bouncing block, painted straight into yuv420p.

    Painting the planes directly (instead of RGB converted by swscale) keeps generating a
    720p clip at the speed of the encoder.
    """
    band = int(height * _STAMP_BAND)
    xs = np.arange(2 * width, dtype=np.float32)
    ys = np.arange(height, dtype=np.float32)[:, None]
    # Twice the width, so that each frame is a plain slice of it (a memcpy).
    luma = (110 + 50 * np.sin(xs * 2 * np.pi / width * 3)[None, :] + 40 * (ys / height)).astype(np.uint8)
    cw, ch = width // 2, height // 2
    u = np.full((ch, cw), _NEUTRAL, np.uint8)
    v = np.full((ch, cw), _NEUTRAL, np.uint8)
    cband = (band + 1) // 2
    u[cband:] = (100 + 60 * np.arange(cw) / cw).astype(np.uint8)[None, :]
    v[cband:] = (150 - 40 * np.arange(ch - cband) / ch).astype(np.uint8)[:, None]
    size = max(8, (height - band) // 4) & ~1

    def paint(index: int, t: float) -> np.ndarray:
        planes = np.empty((height * 3 // 2, width), np.uint8)
        offset = int(t * width / 4) % width
        planes[:height] = luma[:, offset:offset + width]
        chroma = planes[height:].reshape(2, ch, cw)
        chroma[0], chroma[1] = u, v
        x = int((width - size) * (0.5 + 0.5 * math.sin(t * 1.3))) & ~1
        y = band + int((height - band - size) * (0.5 + 0.5 * math.cos(t * 0.9))) & ~1
        planes[y:y + size, x:x + size] = 200
        chroma[0, y // 2:(y + size) // 2, x // 2:(x + size) // 2] = 40
        chroma[1, y // 2:(y + size) // 2, x // 2:(x + size) // 2] = 150
        return planes

    return paint


def _demo_painter(width: int, height: int) -> FramePainter:
    """Sunset sky, two parallax hill ranges, a sinking sun and a bear walking by.

    Painted straight into yuv420p: each pixel is one of three layers (sky, far hills,
    near hills) and a frame is a lookup of (row, layer) in a small colour table, so a
    60 s clip costs little more than its encoding.
    """
    ys = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    sky = np.array([40, 60, 140], np.float32) * (1 - ys) + np.array([250, 160, 90], np.float32) * ys
    by_layer = np.empty((height, 3, 3), np.float32)
    by_layer[:, 0], by_layer[:, 1], by_layer[:, 2] = sky, (70, 90, 110), (40, 70, 40)
    yuv_by_layer = _rgb_to_yuv(by_layer).reshape(height * 3, 3)
    luma_table, u_table, v_table = (np.ascontiguousarray(yuv_by_layer[:, c]) for c in range(3))
    rows = np.arange(height, dtype=np.int32)[:, None]
    xs = np.arange(2 * width, dtype=np.float32)
    # Twice the width, so that scrolling is a slice.
    far_top = (height * (0.62 - 0.06 * np.sin(xs * 2 * np.pi / width * 2))).astype(np.int32)
    near_top = (height * (0.80 - 0.05 * np.sin(xs * 2 * np.pi / width * 1.5))).astype(np.int32)
    sun_r = int(height * 0.08) & ~1
    gy, gx = np.mgrid[-sun_r:sun_r, -sun_r:sun_r]
    sun = gx**2 + gy**2 < sun_r**2
    bear = _bear_sprite(int(height * 0.22) & ~1)
    sun_yuv, bear_yuv = _rgb_to_yuv(np.array([255, 220, 120])), _rgb_to_yuv(np.array([45, 30, 20]))
    cw, ch = width // 2, height // 2

    def paint(index: int, t: float) -> np.ndarray:
        far, near = int(t * 4) % width, int(t * 12) % width
        layer = (rows > far_top[None, far:far + width]).view(np.uint8) + (
            rows > near_top[None, near:near + width]
        ).view(np.uint8)
        planes = np.empty((height * 3 // 2, width), np.uint8)
        luma = planes[:height]
        chroma = planes[height:].reshape(2, ch, cw)
        lookup = rows * 3 + layer
        np.take(luma_table, lookup, out=luma)
        np.take(u_table, lookup[::2, ::2], out=chroma[0])
        np.take(v_table, lookup[::2, ::2], out=chroma[1])
        # The sun sets behind the hills: paint it on sky pixels only.
        sx, sy = (int(width * 0.7) - sun_r) & ~1, (int(height * (0.25 + 0.004 * t)) - sun_r) & ~1
        sky_under_sun = layer[sy:sy + 2 * sun_r, sx:sx + 2 * sun_r] == 0
        visible = sun[: sky_under_sun.shape[0], : sky_under_sun.shape[1]] & sky_under_sun
        _paint_yuv(luma, chroma, visible, sx, sy, sun_yuv)
        bx = int((t * width / 20.0) % (width * 1.4) - width * 0.2) & ~1
        _paint_yuv(luma, chroma, bear, bx, int(height * 0.70) & ~1, bear_yuv)
        return planes

    return paint


def _rgb_to_yuv(rgb: np.ndarray) -> np.ndarray:
    """BT.601 limited-range Y'CbCr of RGB values in the last axis, as uint8."""
    matrix = np.array([[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]]) / 255
    yuv = rgb.astype(np.float32) @ matrix.T.astype(np.float32) + np.array([16, 128, 128], np.float32)
    return np.clip(np.rint(yuv), 0, 255).astype(np.uint8)


def _paint_yuv(luma: np.ndarray, chroma: np.ndarray, mask: np.ndarray, x: int, y: int, yuv: np.ndarray) -> None:
    """Paint a colour where ``mask`` is set (top-left at even x, y) into yuv420p planes."""
    _blit(luma, mask, x, y, int(yuv[0]))
    half = mask[::2, ::2]
    _blit(chroma[0], half, x // 2, y // 2, int(yuv[1]))
    _blit(chroma[1], half, x // 2, y // 2, int(yuv[2]))


def _bear_sprite(size: int) -> np.ndarray:
    """A side-on bear silhouette as a boolean mask, ``size`` pixels tall."""
    h, w = size, int(size * 1.6)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32) / size
    body = ((x - 0.75) / 0.55) ** 2 + ((y - 0.45) / 0.3) ** 2 < 1
    head = (x - 1.35) ** 2 + (y - 0.3) ** 2 < 0.18**2
    ear = (x - 1.30) ** 2 + (y - 0.12) ** 2 < 0.06**2
    legs = ((np.abs(x - 0.4) < 0.09) | (np.abs(x - 1.05) < 0.09)) & (y > 0.55)
    return body | head | ear | legs


def _blit(image: np.ndarray, mask: np.ndarray, x: int, y: int, colour: tuple[int, int, int] | int) -> None:
    """Paint ``colour`` where ``mask`` is set, with its top-left at (x, y), clipped to the image."""
    h, w = mask.shape
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + w, image.shape[1]), min(y + h, image.shape[0])
    if x0 < x1 and y0 < y1:
        image[y0:y1, x0:x1][mask[y0 - y:y1 - y, x0 - x:x1 - x]] = colour
