"""Samples stills from a video file, by media time, with PyAV.

A sample is taken every ``camera.every`` seconds of *media* time: targets 0, t, 2t, ...
(computed as k * t, so they never drift). The sample for a target is the first decoded
frame whose presentation time is at or after the target minus half a frame, and
:attr:`Frame.media_ts` is that frame's true presentation time.

Two ways of getting there, chosen after a cheap probe of the keyframe interval (the
first seconds of packets are demuxed, nothing is decoded):

* keyframes only - when t >= the keyframe interval: only keyframe packets whose time
  has come are decoded (``skip_frame = "NONKEY"``), which is many times faster. A sample
  is then the keyframe nearest the target, within half a keyframe interval of it (exact
  when t is a multiple of a regular interval); where no keyframe falls in that window,
  that stretch is decoded forward from the previous keyframe instead, so no target is
  skipped.
* decode forward - otherwise every frame is decoded and the samples picked from them.

``scan()`` runs as fast as the machine allows. ``poll()`` replays the file like a camera
(a reader thread paces decoding at real time and keeps only the newest frame) or, when
replay is off, hands out the next sample on each call.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from fractions import Fraction
from pathlib import Path

import av
import av.container
import av.error
import av.video.stream

from monitor.config import CameraConfig
from monitor.sources.base import Source, SourceError
from monitor.types import Frame

log = logging.getLogger(__name__)

PROBE_SECONDS = 10.0
PROBE_KEYFRAMES = 4
# A run of this many undecodable packets means the rest of the file is garbage.
MAX_CONSECUTIVE_DECODE_ERRORS = 25


@dataclass(frozen=True, slots=True)
class VideoInfo:
    """What a cheap probe of a video file learned.

    Attributes:
        width: coded width of the video stream.
        height: coded height of the video stream.
        frame_duration: seconds per frame (0.0 when the rate is unknown).
        duration: seconds, when the container knows it.
        keyframe_interval: the longest gap between keyframes seen in the first
            seconds, or None when fewer than two keyframes were seen.
        started_at: wall-clock time of media time 0 (UTC).
        clock: where ``started_at`` came from: "creation_time" or "mtime".
        codec: the video codec's name.
    """

    width: int
    height: int
    frame_duration: float
    duration: float | None
    keyframe_interval: float | None
    started_at: datetime
    clock: str
    codec: str


def probe_video(path: str | Path, *, probe_seconds: float = PROBE_SECONDS) -> VideoInfo:
    """Open a video file and learn its size, rate, keyframe interval and start time.

    Args:
        path: the video file.
        probe_seconds: how many seconds of packets to demux to find the keyframe interval.

    Returns:
        The probe result.

    Raises:
        SourceError: the file is missing, unreadable, not a video or has no video stream.
    """
    path = Path(path)
    with _open_input(path) as container:
        stream = _video_stream(container, path)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        frame_duration = float(1 / rate) if rate else 0.0
        duration = _duration_seconds(container, stream)
        started_at, clock = _start_time(container, stream, path, duration)
        info = VideoInfo(
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            frame_duration=frame_duration,
            duration=duration,
            keyframe_interval=None,
            started_at=started_at,
            clock=clock,
            codec=stream.codec_context.name,
        )
        interval = _keyframe_interval(container, stream, probe_seconds)
    return dataclasses.replace(info, keyframe_interval=interval)


class VideoFileSource(Source):
    """A video file sampled every ``camera.every`` seconds of media time.

    Args:
        camera: the camera config; ``path`` is the file, ``every`` the sample interval,
            ``loop`` whether replay starts again at the end.
        max_width: stills wider than this are scaled down (aspect ratio kept) while
            decoding.
        replay: ``poll()`` paces the file at real time like a camera (a reader thread);
            without it ``poll()`` returns the next sample on each call.
        clock: monotonic seconds, for pacing replay (injectable for tests).
        now: the wall clock, for ``captured_at`` of replayed frames.
        probe_seconds: seconds of packets demuxed to learn the keyframe interval.
    """

    finite = True

    def __init__(
        self,
        camera: CameraConfig,
        *,
        max_width: int = 1280,
        replay: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
        probe_seconds: float = PROBE_SECONDS,
    ) -> None:
        super().__init__(camera.id)
        if camera.path is None:
            raise ValueError(f"camera {camera.id!r} has no path; a video file source needs one")
        self.path = Path(camera.path).expanduser()
        self.every = float(camera.every)
        self.loop = camera.loop
        self.max_width = max_width
        self.replay = camera.replay if replay is None else replay
        self._clock = clock
        self._now = now
        self._probe_seconds = probe_seconds
        self._info: VideoInfo | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._latest: tuple[int, float, av.VideoFrame] | None = None
        self._seq = 0
        self._polled_seq = 0
        self._pending: Iterator[Frame] | None = None

    # -- what the probe decided ------------------------------------------------------

    @property
    def info(self) -> VideoInfo:
        """The probe result (probing the file on first use).

        Raises:
            SourceError: the file cannot be read as a video.
        """
        if self._info is None:
            self._info = probe_video(self.path, probe_seconds=self._probe_seconds)
            self.status.extra.update(
                clock=self._info.clock,
                mode="keyframes-only" if self._keyframes_only(self._info) else "decode-forward",
            )
        return self._info

    @property
    def keyframes_only(self) -> bool:
        """Whether sampling decodes keyframes only (every >= the keyframe interval).

        Raises:
            SourceError: the file cannot be read as a video.
        """
        return self._keyframes_only(self.info)

    def _keyframes_only(self, info: VideoInfo) -> bool:
        return info.keyframe_interval is not None and self.every >= info.keyframe_interval - 1e-6

    # -- scan --------------------------------------------------------------------------

    def scan(self) -> Iterator[Frame]:
        """Every sample of the file, as fast as possible.

        The file is probed here, so an unreadable file fails at once. Damage found
        later (a truncated or corrupt tail) ends the scan after the samples before it;
        the problem is recorded in ``status.last_error`` and logged.

        Returns:
            An iterator of Frames in media-time order.

        Raises:
            SourceError: the file is missing, not a video, has no video stream, or no
                frame of it can be decoded (raised while iterating for the last one).
        """
        info = self.info
        return self._scan(info)

    def _scan(self, info: VideoInfo) -> Iterator[Frame]:
        picker = _TargetPicker(self.every, info.frame_duration / 2)
        self.status.up, self.status.ended, self.status.last_error = True, False, None
        produced = 0
        try:
            with _open_input(self.path) as container:
                decoder = _Decoder(container, _video_stream(container, self.path), self._damage)
                if self._keyframes_only(info):
                    # Half a keyframe interval: with a regular interval <= every, some keyframe
                    # is always that close to a target.
                    tolerance = max(picker.half_frame, (info.keyframe_interval or 0.0) / 2)
                    samples = _keyframe_samples(decoder, picker, tolerance)
                else:
                    samples = _forward_samples(decoder, picker)
                for media_ts, frame in samples:
                    produced += 1
                    yield self._frame(frame, media_ts, info.started_at + timedelta(seconds=media_ts))
        finally:
            self.status.up, self.status.ended = False, True
        if produced == 0 and self.status.last_error:
            raise SourceError(self.status.last_error)

    # -- poll (replay) -----------------------------------------------------------------

    def start(self) -> None:
        """Start the real-time reader thread in replay mode; never raises."""
        if not self.replay or (self._thread is not None and self._thread.is_alive()):
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._replay_loop, name=f"replay-{self.camera_id}", daemon=True
        )
        self._thread.start()

    def poll(self) -> list[Frame]:
        """The newest replayed frame if it is newer than the last one polled.

        Without replay, the next sample of the file instead (decoding up to one
        interval of video). Errors are reported in ``status``, never raised.

        Returns:
            Zero or one Frame.
        """
        if not self.replay:
            return self._poll_next_sample()
        with self._lock:
            latest = self._latest
            if latest is None or latest[0] == self._polled_seq:
                return []
            self._polled_seq = latest[0]
        _, media_ts, frame = latest
        return [self._frame(frame, media_ts, self._now())]

    def close(self) -> None:
        """Stop the reader thread; safe to call twice."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        if self._pending is not None:
            close = getattr(self._pending, "close", None)
            if close is not None:
                close()
            self._pending = None

    def _poll_next_sample(self) -> list[Frame]:
        try:
            if self._pending is None:
                if self.status.ended:
                    return []
                self._pending = self.scan()
            sample = next(self._pending, None)
        except SourceError as exc:
            self._record_error(str(exc))
            self.status.ended = True
            self._pending = None
            return []
        if sample is None:
            self._pending = None
            return []
        return [sample]

    def _replay_loop(self) -> None:
        try:
            info = self.info
        except SourceError as exc:
            self._record_error(str(exc))
            self.status.ended = True
            return
        keyframes_only = self._keyframes_only(info)
        loops = 0
        self.status.up = True
        try:
            while self._replay_once(keyframes_only) and self.loop:
                loops += 1
                self.status.extra["loops"] = str(loops)
                log.debug("camera %s: replay reached the end of %s; looping", self.camera_id, self.path.name)
        finally:
            self.status.up = False
        self.status.ended = not self._stop.is_set()

    def _replay_once(self, keyframes_only: bool) -> bool:
        """Play the file once at real time; False when stopped or unreadable."""
        wall_start = self._clock()
        try:
            with _open_input(self.path) as container:
                decoder = _Decoder(container, _video_stream(container, self.path), self._damage)
                for media_ts, frame in _replay_frames(decoder, keyframes_only):
                    # Show each frame when the wall clock reaches its media time.
                    if self._stop.wait(max(0.0, wall_start + media_ts - self._clock())):
                        return False
                    with self._lock:
                        self._seq += 1
                        self._latest = (self._seq, media_ts, frame)
        except SourceError as exc:
            self._record_error(str(exc))
            return False
        return not self._stop.is_set()

    # -- errors and frames ------------------------------------------------------------

    def _damage(self, exc: av.error.FFmpegError, decoded: int, at: float | None) -> None:
        """Record a demux/decode error: frames were lost, samples before it are kept."""
        self.status.frames_failed += 1
        reason = getattr(exc, "strerror", None) or str(exc)
        if decoded == 0:
            # Not logged: scan() raises it as a SourceError if nothing decodes after it.
            self.status.last_error = (
                f"video file {self.path}: no frame could be decoded ({reason}); the file is damaged or not a video"
            )
            return
        where = f"after {at:.2f}s" if at is not None else "before the first frame"
        self._record_error(
            f"video file {self.path}: damaged data {where} ({reason}); "
            "the file may be truncated or corrupt, samples before it were kept"
        )

    def _record_error(self, message: str) -> None:
        if message != self.status.last_error:
            log.warning("camera %s: %s", self.camera_id, message)
        self.status.last_error = message

    def _frame(self, frame: av.VideoFrame, media_ts: float, captured_at: datetime) -> Frame:
        width, height = scaled_size(frame.width, frame.height, self.max_width)
        image = frame.to_ndarray(format="rgb24", width=width, height=height, interpolation="AREA")
        self.status.last_frame_at = self._now()
        return Frame(
            camera_id=self.camera_id,
            image=image,
            captured_at=captured_at,
            media_ts=media_ts,
            origin=f"{self.path.name}#t={media_ts:.3f}",
        )


def scaled_size(width: int, height: int, max_width: int) -> tuple[int, int]:
    """The size to scale a picture to so that it is at most ``max_width`` wide.

    Args:
        width: source width.
        height: source height.
        max_width: the widest output wanted.

    Returns:
        (width, height), unchanged when already narrow enough; aspect ratio kept.
    """
    if width <= max_width:
        return width, height
    return max_width, max(1, round(height * max_width / width))


class _TargetPicker:
    """Sample targets 0, t, 2t, ... and which decoded frames serve them.

    A frame serves the current target when its time is at least the target minus a
    tolerance: half a frame for frames decoded in order, half a keyframe interval for
    keyframes in keyframes-only mode.
    """

    def __init__(self, every: float, half_frame: float) -> None:
        self.every = every
        self.half_frame = half_frame
        self.index = 0

    @property
    def target(self) -> float:
        # k * t rather than a running sum, so that targets never drift.
        return self.index * self.every

    def wants(self, media_ts: float, tolerance: float) -> bool:
        return media_ts >= self.target - tolerance

    def take(self, media_ts: float, tolerance: float) -> None:
        # One sample per frame: skip every target this frame already stands for.
        self.index += 1
        while self.target - tolerance <= media_ts:
            self.index += 1

    def pick(
        self, frames: list[tuple[float, av.VideoFrame]], key_tolerance: float
    ) -> Iterator[tuple[float, av.VideoFrame]]:
        """The frames that serve a target, in order; keyframes get ``key_tolerance``."""
        for media_ts, frame in frames:
            tolerance = key_tolerance if frame.key_frame else self.half_frame
            if self.wants(media_ts, tolerance):
                self.take(media_ts, tolerance)
                yield media_ts, frame


class _Decoder:
    """Demuxes and decodes one video stream; damage is reported, never raised.

    Args:
        container: the open input.
        stream: its video stream.
        on_damage: called with (error, frames decoded so far, last media time) for each
            demux or decode error.
    """

    def __init__(
        self,
        container: av.container.InputContainer,
        stream: av.video.stream.VideoStream,
        on_damage: Callable[[av.error.FFmpegError, int, float | None], None],
    ) -> None:
        self.container = container
        self.stream = stream
        self.codec = stream.codec_context
        # Slice threads, not frame threads: with frame threading FFmpeg swallows decode
        # errors, and a damaged file would decode to grey frames without a word. Frame
        # threading gained only ~10% on 2 cores with real 720p clips.
        self.codec.thread_type = "SLICE"
        self.clock = _MediaClock(stream)
        self.decoded = 0
        self.failures = 0
        self._on_damage = on_damage

    def packets(self) -> Iterator[av.Packet]:
        """Packets in decode order, ending with FFmpeg's empty flush packet; damage ends them."""
        demuxed = self.container.demux(self.stream)
        while self.failures < MAX_CONSECUTIVE_DECODE_ERRORS:
            try:
                packet = next(demuxed)
            except StopIteration:
                return
            except av.error.FFmpegError as exc:
                self._on_damage(exc, self.decoded, self.clock.last)
                return
            yield packet

    def decode(self, packet: av.Packet | None) -> list[tuple[float, av.VideoFrame]]:
        """Frames (with media time) that come out after sending ``packet`` (None drains)."""
        try:
            frames = self.codec.decode(packet)
        except av.error.FFmpegError as exc:
            self.failures += 1
            self._on_damage(exc, self.decoded, self.clock.last)
            return []
        self.failures = 0
        self.decoded += len(frames)
        return [(self.clock.of_frame(frame), frame) for frame in frames]

    def decode_keyframe(self, packet: av.Packet) -> list[tuple[float, av.VideoFrame]]:
        """Decode one keyframe on its own and get it out at once.

        A stream with B-frames holds decoded frames back for reordering, even when only
        keyframes are decoded; draining and flushing after each keyframe hands it out
        now, which is harmless because a keyframe needs no earlier frame.
        """
        frames = self.decode(packet) + self.decode(None)
        self.codec.flush_buffers()
        return frames

    def keyframes_only(self, enabled: bool) -> None:
        self.codec.skip_frame = "NONKEY" if enabled else "DEFAULT"

    def seconds(self, packet: av.Packet) -> float | None:
        return None if packet.pts is None else self.clock.of_pts(packet.pts)


def _forward_samples(decoder: _Decoder, picker: _TargetPicker) -> Iterator[tuple[float, av.VideoFrame]]:
    """Decode every frame; the first at or after each target (less half a frame) is a sample."""
    for packet in decoder.packets():
        yield from picker.pick(decoder.decode(packet), picker.half_frame)


def _keyframe_samples(
    decoder: _Decoder, picker: _TargetPicker, tolerance: float
) -> Iterator[tuple[float, av.VideoFrame]]:
    """Decode only keyframes within ``tolerance`` of a target, falling back where none is.

    Non-key packets never reach the decoder, and neither do keyframes before the next
    target's window (a keyframe packet's pts is its frame's). The packets since the last
    keyframe are kept: when a target's window passes without a keyframe (an irregular
    keyframe interval the probe did not see), that stretch is decoded forward from its
    keyframe until the next one, so no target goes without its sample.
    """
    decoder.keyframes_only(True)
    since_key: list[av.Packet] = []
    latest = -1.0
    forward = False
    for packet in decoder.packets():
        media_ts = decoder.seconds(packet)
        if packet.is_keyframe:
            if forward:
                yield from picker.pick(decoder.decode(None), tolerance)  # frames held back
                decoder.codec.flush_buffers()
                decoder.keyframes_only(True)
                forward = False
            since_key, latest = [packet], media_ts if media_ts is not None else -1.0
            if media_ts is None or picker.wants(media_ts, tolerance):
                yield from picker.pick(decoder.decode_keyframe(packet), tolerance)
        elif forward:
            yield from picker.pick(decoder.decode(packet), tolerance)
        elif since_key:
            since_key.append(packet)
            if media_ts is not None:
                latest = max(latest, media_ts)
            # A target's window passed with no keyframe in it, or the file ends in a
            # stretch that still holds a frame for the target.
            missed = media_ts is not None and media_ts > picker.target + tolerance
            tail = packet.size == 0 and latest >= picker.target - picker.half_frame
            if missed or tail:
                forward = True
                decoder.keyframes_only(False)
                for held in since_key:
                    yield from picker.pick(decoder.decode(held), tolerance)
                since_key = []


def _replay_frames(decoder: _Decoder, keyframes_only: bool) -> Iterator[tuple[float, av.VideoFrame]]:
    """Every frame in presentation order, or every keyframe, for real-time replay."""
    decoder.keyframes_only(keyframes_only)
    for packet in decoder.packets():
        if not keyframes_only:
            yield from decoder.decode(packet)
        elif packet.is_keyframe:
            yield from decoder.decode_keyframe(packet)


class _MediaClock:
    """Seconds from the stream's start for packet and frame timestamps."""

    def __init__(self, stream: av.video.stream.VideoStream) -> None:
        self.time_base = stream.time_base or Fraction(1, 90_000)
        self.start = stream.start_time or 0
        rate = stream.average_rate or stream.guessed_rate
        self.frame_duration = float(1 / rate) if rate else 0.0
        self.last: float | None = None

    def of_pts(self, pts: int) -> float:
        return max(0.0, float((pts - self.start) * self.time_base))

    def of_frame(self, frame: av.VideoFrame) -> float:
        if frame.pts is not None:
            seconds = self.of_pts(frame.pts)
        else:
            # Some AVI/raw streams carry no pts: count frames from the last known time.
            seconds = 0.0 if self.last is None else self.last + self.frame_duration
        self.last = seconds
        return seconds


def _open_input(path: Path) -> av.container.InputContainer:
    """Open a local video file, turning every failure into a one-line SourceError."""
    if not path.exists():
        raise SourceError(f"video file {path} does not exist; check the camera's path")
    if path.is_dir():
        raise SourceError(f"video file {path} is a folder; a folder is read as still images")
    try:
        return av.open(str(path), mode="r", metadata_errors="replace")
    except av.error.FFmpegError as exc:
        reason = getattr(exc, "strerror", None) or exc.__class__.__name__
        raise SourceError(
            f"video file {path} cannot be read as a video ({reason}); it may be damaged, "
            "incomplete or not a video"
        ) from None
    except OSError as exc:
        raise SourceError(f"video file {path} cannot be opened ({exc.strerror or exc})") from None


def _video_stream(container: av.container.InputContainer, path: Path) -> av.video.stream.VideoStream:
    if not container.streams.video:
        kinds: list[str] = sorted({str(s.type) for s in container.streams}) or ["nothing"]
        container.close()
        raise SourceError(
            f"video file {path} has no video stream (it holds {', '.join(kinds)}); "
            "point the camera at a video file"
        )
    return container.streams.video[0]


def _keyframe_interval(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, probe_seconds: float
) -> float | None:
    """Longest gap between keyframes in the first ``probe_seconds``; packets only, no decode.

    When the window ends with no keyframe for a while, that open stretch counts as a gap
    too (the next one is at least that far): a clip with keyframes at 0 s, 1 s and 13 s
    must not pass for one with a keyframe every second.
    """
    clock = _MediaClock(stream)
    keyframes: list[float] = []
    last_seen = 0.0
    try:
        for packet in container.demux(stream):
            if packet.pts is None:
                continue
            seconds = clock.of_pts(packet.pts)
            last_seen = max(last_seen, seconds)
            if packet.is_keyframe:
                keyframes.append(seconds)
                if len(keyframes) >= PROBE_KEYFRAMES:
                    break
            if seconds > probe_seconds:
                break
    except av.error.FFmpegError:
        pass  # a damaged file: decide with what was seen; scan() reports the damage
    keyframes.sort()
    gaps = [b - a for a, b in zip(keyframes, keyframes[1:], strict=False)]
    if keyframes and len(keyframes) < PROBE_KEYFRAMES:
        gaps.append(last_seen - keyframes[-1])
    return max(gaps) if len(keyframes) > 1 else None


def _duration_seconds(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float | None:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return None


def _start_time(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    path: Path,
    duration: float | None,
) -> tuple[datetime, str]:
    """Wall-clock time of media time 0: the recorded creation_time, else mtime - duration."""
    for metadata in (container.metadata, stream.metadata):
        parsed = _parse_creation_time(metadata.get("creation_time"))
        if parsed is not None:
            return parsed, "creation_time"
    # A recorder writes the file while it records, so its mtime is about the end.
    mtime = datetime.fromtimestamp(path.stat().st_mtime, tz=timezone.utc)
    return mtime - timedelta(seconds=duration or 0.0), "mtime"


def _parse_creation_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace(" ", "T"))
    except ValueError:
        return None
    # MP4 muxers write 1904-01-01 or 1970-01-01 when no time was set: not a real time.
    if parsed.year < 1980:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
