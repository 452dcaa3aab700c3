"""Frame sources and the one factory that picks the right one for a camera.

A camera's *kind* comes from its url scheme (rtsp, rtsps, http, https, ...) or, for a
``path``, from what the path is (a file or a folder). :data:`SOURCE_KINDS` maps each kind
to the function that builds its source; :func:`create_source` looks the kind up there,
so adding a backend is one entry, not another branch.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from monitor.config import LIVE_SCHEMES, CameraConfig
from monitor.redact import redact_url
from monitor.sources.base import Source, SourceError
from monitor.sources.live import LiveSource
from monitor.sources.stills import StillsSource
from monitor.sources.video_file import VideoFileSource

__all__ = [
    "SOURCE_KINDS",
    "Source",
    "SourceError",
    "create_source",
    "register_source",
    "source_kind",
]

# (camera, scan, max_width) -> Source
SourceBuilder = Callable[[CameraConfig, bool, int], Source]


def _live(camera: CameraConfig, scan: bool, max_width: int) -> Source:
    return LiveSource(camera, max_width=max_width)


def _video_file(camera: CameraConfig, scan: bool, max_width: int) -> Source:
    # A file that is scanned needs no real-time reader thread.
    return VideoFileSource(camera, max_width=max_width, replay=camera.replay and not scan)


def _stills(camera: CameraConfig, scan: bool, max_width: int) -> Source:
    return StillsSource(camera, max_width=max_width, settle_seconds=0.0 if scan else 1.0)


SOURCE_KINDS: dict[str, SourceBuilder] = {
    **{scheme: _live for scheme in LIVE_SCHEMES},
    "file": _video_file,
    "dir": _stills,
}


def source_kind(camera: CameraConfig) -> str:
    """The registry key for a camera: its url scheme, or "file" / "dir" for a path.

    Args:
        camera: the camera config.

    Returns:
        The kind, lower case.

    Raises:
        SourceError: the path does not exist.
    """
    if camera.url is not None:
        return camera.url.split("://", 1)[0].lower() if "://" in camera.url else ""
    path = Path(str(camera.path)).expanduser()
    if path.is_dir():
        return "dir"
    if path.exists():
        return "file"
    raise SourceError(f"camera {camera.id!r}: path {path} does not exist; fix the path or remove the camera")


def register_source(kind: str, builder: SourceBuilder) -> None:
    """Add or replace the builder for a kind (a url scheme, "file" or "dir").

    Args:
        kind: the registry key.
        builder: called as ``builder(camera, scan, max_width)``.
    """
    SOURCE_KINDS[kind.lower()] = builder


def create_source(camera: CameraConfig, *, scan: bool = False, max_width: int = 1280) -> Source:
    """Build the source for a camera; nothing is opened until ``start()``/``scan()``.

    Args:
        camera: the camera config.
        scan: the source will be read with ``scan()`` (``monitor scan``), not polled;
            a video file then starts no replay thread.
        max_width: frames are scaled down to at most this width.

    Returns:
        A LiveSource, VideoFileSource or StillsSource (or a registered backend).

    Raises:
        SourceError: no backend for the url scheme, or the path does not exist.
    """
    kind = source_kind(camera)
    builder = SOURCE_KINDS.get(kind)
    if builder is None:
        known = ", ".join(sorted(k + "://" for k in SOURCE_KINDS if k not in ("file", "dir")))
        raise SourceError(
            f"camera {camera.id!r}: no source reads {redact_url(camera.location)!r}; use one of {known}, "
            "a video file or a folder of images"
        )
    return builder(camera, scan, max_width)
