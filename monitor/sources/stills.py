"""Reads a folder of still images, such as a camera trap's SD card dump.

Images (.jpg, .jpeg, .png, .webp in any letter case) are found recursively; hidden files
and folders are ignored (card dumps made on a Mac carry ``._IMG_0001.JPG`` resource
forks that are not images). Every image is handed out once: ``scan()`` yields all of
them in path order, ``poll()`` the ones that appeared since the last poll. The capture
time comes from EXIF (DateTimeOriginal, else DateTime), else from the file's mtime. A
file that cannot be decoded is skipped with a warning and counted in
``status.frames_failed``; it never stops the folder.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone, tzinfo
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from monitor.config import CameraConfig
from monitor.sources.base import Source, SourceError
from monitor.types import Frame

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})
EXIF_IFD = 0x8769
TAG_DATETIME = 306
TAG_DATETIME_ORIGINAL = 36867
TAG_OFFSET_TIME = 36880
TAG_OFFSET_TIME_ORIGINAL = 36881
TAG_SUBSEC_TIME_ORIGINAL = 37521
TAG_ORIENTATION = 274
_EXIF_FORMAT = "%Y:%m:%d %H:%M:%S"
# Pillow raises any of these for a file that is not a (complete) image.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


class StillsSource(Source):
    """A folder of still images, each handed out once.

    Args:
        camera: the camera config; ``path`` is the folder.
        max_width: images wider than this are scaled down (aspect ratio kept).
        settle_seconds: ``poll()`` leaves a file alone until it is this old, so that a
            file still being copied is not read half-written.
        max_per_poll: at most this many images per ``poll()``; the rest come next time,
            so that a large card dump does not stall the sampler.
        exif_timezone: the zone of EXIF times that carry no offset (cameras write
            local time without a zone; the default treats it as UTC).
        wall_time: seconds since the epoch (injectable for tests).
    """

    finite = True

    def __init__(
        self,
        camera: CameraConfig,
        *,
        max_width: int = 1280,
        settle_seconds: float = 1.0,
        max_per_poll: int = 100,
        exif_timezone: tzinfo = timezone.utc,
        wall_time: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(camera.id)
        if camera.path is None:
            raise ValueError(f"camera {camera.id!r} has no path; a folder source needs one")
        self.folder = Path(camera.path).expanduser()
        self.max_width = max_width
        self.settle_seconds = settle_seconds
        self.max_per_poll = max_per_poll
        self.exif_timezone = exif_timezone
        self._wall_time = wall_time
        self._seen: set[Path] = set()
        self._said_empty = False

    def list_images(self) -> list[Path]:
        """Every image file under the folder, recursively, sorted by path.

        Returns:
            The image paths.

        Raises:
            SourceError: the folder is missing or unreadable.
        """
        if not self.folder.is_dir():
            raise SourceError(f"image folder {self.folder} does not exist or is not a folder; check the camera's path")
        found: list[Path] = []
        errors: list[OSError] = []
        for root, dirs, files in os.walk(self.folder, onerror=errors.append):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            found.extend(
                Path(root, name) for name in files
                if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES
            )
        if errors and not found and errors[0].filename == str(self.folder):
            raise SourceError(
                f"image folder {self.folder} cannot be read ({errors[0].strerror}); check its permissions"
            )
        return sorted(found)

    def scan(self) -> Iterator[Frame]:
        """Every image in the folder, in path order; undecodable files are skipped.

        An empty folder yields nothing; the reason is logged and kept in
        ``status.last_error``.

        Returns:
            An iterator of Frames.

        Raises:
            SourceError: the folder is missing or unreadable (raised at once).
        """
        paths = self.list_images()
        self.status.up = True
        if not paths:
            self._note_empty()
        return self._scan(paths)

    def poll(self) -> list[Frame]:
        """Images that appeared (and stopped changing) since the last poll.

        Returns:
            Up to ``max_per_poll`` Frames, in path order; errors go to ``status``.
        """
        try:
            paths = self.list_images()
        except SourceError as exc:
            self._set_down(str(exc))
            return []
        self.status.up = True
        settled_before = self._wall_time() - self.settle_seconds
        ready = [p for p in paths if p not in self._seen and _mtime(p, default=math.inf) <= settled_before]
        if not paths and not self._said_empty:
            # Waiting for a card dump is normal under `monitor run`: say so once, quietly.
            log.info("camera %s: %s", self.camera_id, self._empty_message())
        self._said_empty = not paths
        return list(self._load_all(ready[: self.max_per_poll]))

    def _scan(self, paths: list[Path]) -> Iterator[Frame]:
        yield from self._load_all(paths)
        self.status.ended = True

    def _load_all(self, paths: list[Path]) -> Iterator[Frame]:
        for path in paths:
            self._seen.add(path)
            frame = self._load(path)
            if frame is not None:
                yield frame

    def _load(self, path: Path) -> Frame | None:
        """One image as a Frame, or None (logged and counted) when it cannot be decoded."""
        try:
            image, exif_time = load_still(path, self.max_width, exif_timezone=self.exif_timezone)
        except _DECODE_ERRORS as exc:
            self.status.frames_failed += 1
            reason = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
            log.warning("camera %s: skipping %s: not a readable image (%s)", self.camera_id, path, reason)
            return None
        captured_at = exif_time or datetime.fromtimestamp(_mtime(path, default=self._wall_time()), timezone.utc)
        self.status.last_frame_at = datetime.now(timezone.utc)
        return Frame(
            camera_id=self.camera_id,
            image=image,
            captured_at=captured_at,
            media_ts=None,
            origin=path.relative_to(self.folder).as_posix(),
        )

    def _empty_message(self) -> str:
        kinds = ", ".join(sorted(IMAGE_SUFFIXES))
        return f"image folder {self.folder} holds no images ({kinds}, searched recursively); copy images into it"

    def _note_empty(self) -> None:
        message = self._empty_message()
        log.warning("camera %s: %s", self.camera_id, message)
        self.status.last_error = message

    def _set_down(self, message: str) -> None:
        if message != self.status.last_error:
            log.warning("camera %s: %s", self.camera_id, message)
        self.status.up, self.status.last_error = False, message


def load_still(
    path: str | Path, max_width: int, *, exif_timezone: tzinfo = timezone.utc
) -> tuple[np.ndarray, datetime | None]:
    """Decode an image upright, scaled to at most ``max_width``, with its EXIF capture time.

    JPEGs are decoded at a reduced DCT scale when that is still wide enough, which makes
    large camera-trap photos several times cheaper to read.

    Args:
        path: the image file.
        max_width: the widest output wanted.
        exif_timezone: the zone of EXIF times that carry no offset.

    Returns:
        (HxWx3 uint8 RGB pixels, capture time from EXIF in UTC or None).

    Raises:
        OSError, ValueError, SyntaxError, EOFError, PIL.Image.DecompressionBombError:
            the file is not a readable image.
    """
    with Image.open(path) as opened:
        exif = opened.getexif()
        transposed = exif.get(TAG_ORIENTATION) in (5, 6, 7, 8)
        upright_width = opened.height if transposed else opened.width
        if upright_width > max_width:
            scale = max_width / upright_width
            opened.draft("RGB", (math.ceil(opened.width * scale), math.ceil(opened.height * scale)))
        image = ImageOps.exif_transpose(opened).convert("RGB")
    if image.width > max_width:
        height = max(1, round(image.height * max_width / image.width))
        image = image.resize((max_width, height), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(image, dtype=np.uint8), exif_capture_time(exif, exif_timezone)


def exif_capture_time(exif: Image.Exif, zone: tzinfo = timezone.utc) -> datetime | None:
    """DateTimeOriginal (Exif IFD), else DateTime (IFD0), as a UTC datetime.

    Args:
        exif: the image's EXIF, from ``Image.getexif()``.
        zone: the zone to assume when the EXIF carries no OffsetTime.

    Returns:
        The capture time, or None when absent or unparseable (e.g. "0000:00:00 00:00:00").
    """
    exif_ifd = exif.get_ifd(EXIF_IFD)
    original = (
        exif_ifd.get(TAG_DATETIME_ORIGINAL),
        exif_ifd.get(TAG_OFFSET_TIME_ORIGINAL),
        exif_ifd.get(TAG_SUBSEC_TIME_ORIGINAL),
    )
    candidates = (original, (exif.get(TAG_DATETIME), exif_ifd.get(TAG_OFFSET_TIME), None))
    for text, offset, subsec in candidates:
        parsed = _parse_exif_time(text, offset, subsec, zone)
        if parsed is not None:
            return parsed
    return None


def _parse_exif_time(text: object, offset: object, subsec: object, zone: tzinfo) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        value = datetime.strptime(text.strip("\x00 "), _EXIF_FORMAT)
    except ValueError:
        return None
    if isinstance(subsec, str) and subsec.strip("\x00 ").isdigit():
        digits = subsec.strip("\x00 ")
        value += timedelta(seconds=int(digits) / 10 ** len(digits))
    value = value.replace(tzinfo=_parse_offset(offset) or zone)
    return value.astimezone(timezone.utc)


def _parse_offset(offset: object) -> tzinfo | None:
    """An EXIF OffsetTime such as "+02:00" as a tzinfo, or None."""
    if not isinstance(offset, str):
        return None
    text = offset.strip("\x00 ")
    if len(text) != 6 or text[0] not in "+-" or text[3] != ":":
        return None
    try:
        minutes = int(text[1:3]) * 60 + int(text[4:6])
    except ValueError:
        return None
    return timezone(timedelta(minutes=minutes if text[0] == "+" else -minutes))


def _mtime(path: Path, *, default: float) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return default
