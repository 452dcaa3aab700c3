"""Reads a live camera (RTSP, RTSPS, HTTP MJPEG or HLS) with PyAV, one thread per camera.

The reader thread connects, decodes and keeps only the newest frame; ``poll()`` hands it
out once, never waiting on the network. When the stream fails or goes silent for
``read_timeout`` the thread reconnects with exponential backoff and full jitter (so that
many cameras behind one dead switch do not reconnect in lockstep). Each camera has its
own thread, so one dead camera never delays another.

To save CPU, once two keyframe gaps have been seen and ``every`` is at least the
stream's keyframe interval, only keyframes are decoded: a sample taken every ``every``
seconds then still gets a fresh picture, at most one keyframe interval old.

Camera URLs often hold credentials and FFmpeg's errors quote the URL, so every message
that leaves this module (status, logs, exceptions) goes through :mod:`monitor.redact`.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone

import av
import av.container
import av.error
import av.video.stream

from monitor.config import CameraConfig
from monitor.redact import redact_text, redact_url
from monitor.sources.base import Source, SourceError
from monitor.sources.video_file import scaled_size
from monitor.types import Frame

log = logging.getLogger(__name__)

# Keyframe gaps to see before trusting the interval enough to skip non-key frames.
KEYFRAME_GAPS_NEEDED = 2
# Give up waiting for a first keyframe after this many packets (some streams never flag one).
MAX_PACKETS_BEFORE_KEYFRAME = 300
# A run of this many undecodable packets means the stream is broken: reconnect.
MAX_CONSECUTIVE_DECODE_ERRORS = 50


def backoff_delay(attempt: int, *, base: float, cap: float, rng: random.Random) -> float:
    """Seconds to wait before reconnect ``attempt`` (0-based): full-jitter exponential backoff.

    Args:
        attempt: how many reconnects failed in a row before this one.
        base: the ceiling of the first wait.
        cap: the largest ceiling.
        rng: the random source (seed it in tests).

    Returns:
        A delay drawn uniformly from [0, min(cap, base * 2**attempt)].
    """
    ceiling = min(cap, base * 2 ** min(attempt, 60))
    return rng.uniform(0.0, ceiling)


class LiveSource(Source):
    """A live stream read by a background thread that keeps only the newest frame.

    Args:
        camera: the camera config (``url``, ``every``, ``transport``, ``open_timeout``,
            ``read_timeout``).
        max_width: frames wider than this are scaled down (aspect ratio kept).
        backoff_base: the first reconnect waits up to this many seconds.
        backoff_cap: reconnect waits never exceed this many seconds (5 s by default, so a
            camera whose server returns is back within 10 s, as operators expect).
        rng: random source for the jitter (seed it in tests).
        now: the wall clock, for ``captured_at``.
    """

    finite = False

    def __init__(
        self,
        camera: CameraConfig,
        *,
        max_width: int = 1280,
        backoff_base: float = 0.5,
        backoff_cap: float = 5.0,
        rng: random.Random | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        super().__init__(camera.id)
        if camera.url is None:
            raise ValueError(f"camera {camera.id!r} has no url; a live source needs one")
        self._url = camera.url
        self.display_url = redact_url(camera.url)
        self.every = float(camera.every)
        self.transport = camera.transport
        self.open_timeout = float(camera.open_timeout)
        self.read_timeout = float(camera.read_timeout)
        self.max_width = max_width
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self._rng = rng or random.Random()
        self._now = now
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._latest: tuple[int, datetime, av.VideoFrame] | None = None
        self._seq = 0
        self._polled_seq = 0
        self.keyframe_interval: float | None = None
        self.keyframes_only = False
        self.status.extra["url"] = self.display_url

    def start(self) -> None:
        """Start the reader thread; a dead camera shows up in ``status``, never as an error."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"live-{self.camera_id}", daemon=True)
        self._thread.start()

    def poll(self) -> list[Frame]:
        """The newest frame, if it is newer than the last one returned; never blocks.

        Returns:
            Zero or one Frame.
        """
        with self._lock:
            latest = self._latest
            if latest is None or latest[0] == self._polled_seq:
                return []
            self._polled_seq = latest[0]
        _, captured_at, frame = latest
        width, height = scaled_size(frame.width, frame.height, self.max_width)
        try:
            image = frame.to_ndarray(format="rgb24", width=width, height=height, interpolation="AREA")
        except (ValueError, av.error.FFmpegError) as exc:
            # An odd pixel format must cost one frame, not the sampler's thread.
            self.status.frames_failed += 1
            log.warning("camera %s: cannot convert a frame to RGB (%s)", self.camera_id, exc)
            return []
        return [Frame(self.camera_id, image, captured_at, media_ts=None, origin=self.display_url)]

    def close(self) -> None:
        """Stop the reader thread; waits at most about one open/read timeout. Safe twice."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            # The thread may sit inside FFmpeg until its own timeout fires; it is a daemon,
            # so a thread that outlives the wait cannot keep the process alive.
            thread.join(timeout=max(self.open_timeout, self.read_timeout) + 1.0)
            if thread.is_alive():
                log.debug("camera %s: reader still inside FFmpeg after close; left to its timeout", self.camera_id)
        self.status.up = False

    # -- reader thread -----------------------------------------------------------------

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            frames_before = self._seq
            try:
                self._read_once()
                message = f"{self.display_url}: the stream ended (the camera closed the connection)"
            except SourceError as exc:
                message = str(exc)
            except Exception as exc:  # noqa: BLE001 - the thread must outlive any one failure
                message = f"{self.display_url}: unexpected {exc.__class__.__name__}: {redact_text(str(exc))}"
            self.status.up = False
            if self._stop.is_set():
                break
            if self._seq != frames_before:
                attempt = 0  # it worked for a while: start the backoff again from the bottom
            self._record_error(message, repeated=attempt > 0)
            delay = backoff_delay(attempt, base=self.backoff_base, cap=self.backoff_cap, rng=self._rng)
            attempt += 1
            if self._stop.wait(delay):
                break
            self.status.reconnects += 1
        self.status.up = False

    def _read_once(self) -> None:
        """Connect and decode until the stream ends or fails.

        Raises:
            SourceError: a redacted one-line reason the stream could not be read.
        """
        container = self._open()
        try:
            if not container.streams.video:
                raise SourceError(f"{self.display_url}: the stream has no video; check the URL")
            self._decode(container, container.streams.video[0])
        except av.error.FFmpegError as exc:
            raise SourceError(self._describe(exc, reading=True)) from None
        finally:
            container.close()

    def _open(self) -> av.container.InputContainer:
        options: dict[str, str] = {}
        if self._url.lower().startswith(("rtsp://", "rtsps://")):
            options = {"rtsp_transport": self.transport, "allowed_media_types": "video"}
        started = time.monotonic()
        try:
            return av.open(self._url, mode="r", options=options, timeout=(self.open_timeout, self.read_timeout))
        except av.error.FFmpegError as exc:
            timed_out = time.monotonic() - started >= 0.9 * self.open_timeout
            raise SourceError(self._describe(exc, reading=False, timed_out=timed_out)) from None
        except OSError as exc:
            raise SourceError(f"{self.display_url}: cannot connect ({redact_text(str(exc))})") from None

    def _decode(self, container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> None:
        codec = stream.codec_context
        codec.thread_type = "SLICE"
        # Learnt afresh on every connection: the camera's settings may have changed.
        self.keyframe_interval, self.keyframes_only = None, False
        keyframes = _KeyframeClock(stream)
        waiting_for_key = not codec.codec.intra_only
        skipped = 0
        failures = 0
        for packet in container.demux(stream):
            if self._stop.is_set():
                return
            if packet.size == 0:
                continue
            interval = keyframes.observe(packet)
            if interval is not None and interval != self.keyframe_interval:
                # At a keyframe, so switching modes here never decodes from a P-frame.
                self._learn_interval(interval, codec)
            # Decoding from a P-frame gives grey smears, not a picture worth classifying.
            if waiting_for_key and not packet.is_keyframe and skipped < MAX_PACKETS_BEFORE_KEYFRAME:
                skipped += 1
                continue
            waiting_for_key = False
            if self.keyframes_only and not packet.is_keyframe:
                continue
            try:
                frames = codec.decode(packet)
                if self.keyframes_only:
                    # Streams with B-frames hold decoded frames back for reordering, even
                    # keyframes: drain now so the newest keyframe is not a GOP late.
                    frames += codec.decode(None)
                    codec.flush_buffers()
            except av.error.InvalidDataError:
                failures += 1
                self.status.frames_failed += 1
                if failures >= MAX_CONSECUTIVE_DECODE_ERRORS:
                    raise
                continue
            failures = 0
            for frame in frames:
                self._publish(frame)

    def _learn_interval(self, interval: float, codec: av.codec.context.CodecContext) -> None:
        """Decode keyframes only while every keyframe gap seen fits in one sample interval."""
        self.keyframe_interval = interval
        keyframes_only = self.every >= interval - 1e-6
        codec.skip_frame = "NONKEY" if keyframes_only else "DEFAULT"
        mode = "keyframes-only" if keyframes_only else "decode-all"
        if keyframes_only != self.keyframes_only or "mode" not in self.status.extra:
            log.info(
                "camera %s: keyframe gaps up to %.2fs, sampling every %.2fs: %s",
                self.camera_id, interval, self.every, mode,
            )
        self.keyframes_only = keyframes_only
        self.status.extra["mode"] = mode

    def _publish(self, frame: av.VideoFrame) -> None:
        now = self._now()
        with self._lock:
            self._seq += 1
            self._latest = (self._seq, now, frame)
        if not self.status.up:
            log.info("camera %s: receiving frames from %s", self.camera_id, self.display_url)
        self.status.up = True
        self.status.last_frame_at = now

    def _record_error(self, message: str, *, repeated: bool) -> None:
        # A dead camera retries for hours: say it once loudly, then quietly.
        level = logging.DEBUG if repeated and message == self.status.last_error else logging.WARNING
        log.log(level, "camera %s: %s", self.camera_id, message)
        self.status.last_error = message

    def _describe(self, exc: av.error.FFmpegError, *, reading: bool, timed_out: bool = False) -> str:
        """One redacted line: what went wrong and what to check.

        Only the already-redacted display URL and FFmpeg's reason (redacted here) go in:
        ``str(exc)`` quotes the raw URL.
        """
        reason = redact_text(getattr(exc, "strerror", None) or exc.__class__.__name__)
        if isinstance(exc, av.error.ExitError) or (timed_out and not reading):
            limit = self.read_timeout if reading else self.open_timeout
            what = "no data" if reading else "no answer"
            hint = f"{what} within {limit:g}s; check the address, the network and that the camera is on"
        elif isinstance(exc, av.error.ConnectionRefusedError):
            hint = "connection refused; check the host and port and that the camera is on"
        elif isinstance(exc, av.error.HTTPNotFoundError):
            hint = "stream not found (404); check the path in the URL"
        elif isinstance(exc, (av.error.HTTPUnauthorizedError, av.error.HTTPForbiddenError)):
            hint = f"access denied ({reason}); check the user name and password"
        elif reading:
            hint = f"the stream broke ({reason}); reconnecting"
        else:
            hint = f"cannot open the stream ({reason}); check the URL and that the camera is on"
        return f"{self.display_url}: {hint}"


class _KeyframeClock:
    """Learns a stream's keyframe interval (the longest gap so far) from packet flags."""

    def __init__(self, stream: av.video.stream.VideoStream) -> None:
        self.time_base = stream.time_base
        self.last: float | None = None
        self.gaps = 0
        self.longest = 0.0

    def observe(self, packet: av.Packet) -> float | None:
        """Note a packet; at each keyframe, once enough gaps were seen, the interval."""
        if not packet.is_keyframe or packet.pts is None or self.time_base is None:
            return None
        seconds = float(packet.pts * self.time_base)
        if self.last is not None and seconds > self.last:
            self.longest = max(self.longest, seconds - self.last)
            self.gaps += 1
        self.last = seconds
        return self.longest if self.gaps >= KEYFRAME_GAPS_NEEDED else None
