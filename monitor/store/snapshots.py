"""Snapshot JPEGs on disk: atomic writes, safe lookups, crash clean-up.

Responsible for the files behind review items. A snapshot is written to a temporary
file in its final folder, fsynced and renamed into place, so a reader (or a crash) never
sees half a JPEG; leftovers of a crash are temporary files that :meth:`sweep_temp`
removes. Paths handed out are relative to the root (``site/camera/YYYY-MM-DD/
HHMMSS-<uuid8>.jpg``, UTC), and :meth:`resolve` refuses anything that would leave the
root: ``..``, absolute paths, and symlinks pointing outside.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import re
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
from PIL import Image

from monitor.store.db import StoreError, one_line

log = logging.getLogger(__name__)

TEMP_PREFIX = ".tmp-"
_COMPONENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class SnapshotNotFound(StoreError):
    """No snapshot at that path, or a path that points outside the snapshot root."""


class SnapshotStore:
    """JPEG snapshots under one root folder.

    Args:
        root: the folder; created on the first save, not here.
        jpeg_quality: Pillow JPEG quality, 1-95.
    """

    def __init__(self, root: Path, *, jpeg_quality: int = 85) -> None:
        if not 1 <= jpeg_quality <= 95:
            raise ValueError(f"jpeg_quality must be between 1 and 95, got {jpeg_quality}")
        self.root = Path(root)
        self.jpeg_quality = jpeg_quality

    def save(self, image: np.ndarray, *, site_id: str, camera_id: str, captured_at: datetime) -> str:
        """Encode ``image`` as JPEG and write it atomically.

        Args:
            image: RGB pixels, HxWx3 uint8.
            site_id: the site's id (one path component).
            camera_id: the camera's id (one path component).
            captured_at: timezone-aware capture time; the folder and name use its UTC value.

        Returns:
            The path relative to the root, with '/' separators.

        Raises:
            ValueError: a bad image, an id that is not a plain name, or a naive datetime.
            StoreError: the file cannot be written (full disk, permissions); no partial
                or temporary file is left behind.
        """
        for what, value in (("site_id", site_id), ("camera_id", camera_id)):
            if not _COMPONENT.match(value):
                raise ValueError(f"{what} {value!r} cannot be a folder name; use letters, digits, '_', '-', '.'")
        if captured_at.utcoffset() is None:
            raise ValueError("captured_at must be timezone-aware")
        data = self._encode(image)
        utc = captured_at.astimezone(timezone.utc)
        relative = PurePosixPath(site_id, camera_id, f"{utc:%Y-%m-%d}", f"{utc:%H%M%S}-{uuid.uuid4().hex[:8]}.jpg")
        target = self.root.joinpath(*relative.parts)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            _write_atomically(target, data)
        except OSError as exc:
            log.debug("snapshot write failed", exc_info=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StoreError(
                    f"disk full: cannot write snapshot under {self.root}; free some space "
                    "or point `snapshots:` at a bigger disk"
                ) from exc
            raise StoreError(
                f"cannot write snapshot under {self.root}: {one_line(exc)}; check the folder and its permissions"
            ) from exc
        return str(relative)

    def resolve(self, relative: str) -> Path:
        """The absolute path of an existing snapshot, if it lies inside the root.

        Args:
            relative: a path returned by :meth:`save`.

        Returns:
            The real path of the file (symlinks resolved).

        Raises:
            SnapshotNotFound: no such file, or the path is absolute, contains '..' or a
                hidden/temporary name, or resolves (through a symlink) outside the root.
        """
        root = self.root.resolve()
        candidate = root.joinpath(*_checked_parts(relative))
        try:
            real = candidate.resolve(strict=True)
        except (OSError, RuntimeError):  # missing, or a symlink loop
            raise SnapshotNotFound(f"no snapshot {relative!r}") from None
        if not real.is_relative_to(root):
            raise SnapshotNotFound(f"snapshot path {relative!r} points outside the snapshot folder")
        if not real.is_file():
            raise SnapshotNotFound(f"no snapshot {relative!r}")
        return real

    def delete(self, relative: str) -> bool:
        """Delete a snapshot; deleting one that is already gone is not an error.

        A symlink inside the root is removed itself; its target is never touched.

        Args:
            relative: a path returned by :meth:`save`.

        Returns:
            True when a file was removed, False when there was none.

        Raises:
            SnapshotNotFound: the path is not a safe relative path inside the root.
            StoreError: the file exists but cannot be removed.
        """
        root = self.root.resolve()
        path = root.joinpath(*_checked_parts(relative))
        try:
            parent = path.parent.resolve(strict=True)
        except (OSError, RuntimeError):
            return False
        if not parent.is_relative_to(root):
            raise SnapshotNotFound(f"snapshot path {relative!r} points outside the snapshot folder")
        try:
            (parent / path.name).unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StoreError(f"cannot delete snapshot {relative!r}: {one_line(exc)}") from exc
        return True

    def sweep_temp(self, *, older_than_s: float = 60.0) -> int:
        """Remove temporary files left by a crash in the middle of a save.

        Args:
            older_than_s: keep temporary files younger than this, which may belong to
                a save still running in another process.

        Returns:
            How many files were removed.
        """
        if not self.root.is_dir():
            return 0
        cutoff = time.time() - older_than_s
        removed = 0
        # os.walk does not follow symlinked folders, so the sweep stays inside the root.
        for folder, _dirs, files in os.walk(self.root):
            for name in files:
                if not name.startswith(TEMP_PREFIX):
                    continue
                path = Path(folder, name)
                try:
                    if path.lstat().st_mtime <= cutoff:
                        path.unlink()
                        removed += 1
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    log.warning("cannot remove leftover snapshot temp file %s: %s", path, one_line(exc))
        if removed:
            log.info("removed %d leftover snapshot temp file(s) under %s", removed, self.root)
        return removed

    def _encode(self, image: np.ndarray) -> bytes:
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            shape = getattr(image, "shape", None)
            raise ValueError(f"snapshot image must be an HxWx3 uint8 RGB array, got shape {shape}")
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="JPEG", quality=self.jpeg_quality)
        return buffer.getvalue()


def _checked_parts(relative: str) -> tuple[str, ...]:
    """Split a snapshot path into safe parts or raise SnapshotNotFound."""
    if not isinstance(relative, str) or not relative or "\x00" in relative or "\\" in relative:
        raise SnapshotNotFound(f"snapshot path {relative!r} is not a relative path")
    pure = PurePosixPath(relative)
    if pure.is_absolute() or PureWindowsPath(relative).drive:
        raise SnapshotNotFound(f"snapshot path {relative!r} is absolute; only paths inside the snapshot folder")
    parts = pure.parts
    if any(part == ".." for part in parts):
        raise SnapshotNotFound(f"snapshot path {relative!r} contains '..'")
    if any(part.startswith(".") for part in parts):
        raise SnapshotNotFound(f"snapshot path {relative!r} names a hidden or temporary file")
    return parts


def _write_atomically(target: Path, data: bytes) -> None:
    temp = target.with_name(f"{TEMP_PREFIX}{uuid.uuid4().hex}-{target.name}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            # Durable before the rename, so the name never points at a half-written file.
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, target)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
