"""The one small interface every source implements, and its errors.

A source turns a camera, a video file or a folder of stills into :class:`Frame`s.
Two ways of reading it:

* ``poll()`` - non-blocking; called by the sampler's interval job every ``every``
  seconds under `monitor run`. A live stream returns its newest frame (if it is newer
  than the last one polled), a replayed file the frame at the current playback time,
  a folder the images that appeared since the last poll. Never blocks on the network:
  a dead camera returns [] and reports itself in ``status``.
* ``scan()`` - for finite sources only (files, folders): yields every sample as fast
  as the machine allows, for `monitor scan`.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator

from monitor.types import Frame, SourceStatus


class SourceError(Exception):
    """A source cannot be read; the message is one line, credentials already redacted."""


class Source(abc.ABC):
    """A camera, a video file or a folder of stills."""

    finite: bool = False

    def __init__(self, camera_id: str) -> None:
        self.camera_id = camera_id
        self.status = SourceStatus(camera_id=camera_id)

    def start(self) -> None:
        """Start background work (a reader thread); must not raise for a dead camera."""

    @abc.abstractmethod
    def poll(self) -> list[Frame]:
        """Stills taken since the last poll; never blocks for long."""

    def scan(self) -> Iterator[Frame]:
        """Every sample of a finite source, as fast as possible.

        Raises:
            SourceError: the file or folder cannot be read.
        """
        raise SourceError(f"camera {self.camera_id!r}: a live stream cannot be scanned; use `monitor run`")

    def close(self) -> None:
        """Stop background work and release the input; safe to call twice."""

    def __enter__(self) -> "Source":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
