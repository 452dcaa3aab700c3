"""Video file sampling: exact media timestamps, replay pacing, damaged and wrong files."""

from __future__ import annotations

import logging
import math
import os
import time
from datetime import datetime, timedelta, timezone
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from monitor.sources.base import SourceError
from monitor.sources.synthetic import make_clip, read_stamp
from monitor.sources.video_file import VideoFileSource, probe_video, scaled_size

EPS = 1e-6


def assert_exact_samples(
    frames, *, every: float, frame_duration: float, keyframes_only: bool, gop: float | None = None
) -> None:
    """Each sample's media_ts is its stamped frame's true time and sits on its target.

    Decode-forward: sample k is within half a frame of target k * every.
    Keyframes-only: each sample is a keyframe within half a GOP of target k * every.
    """
    assert frames, "no samples"
    for k, frame in enumerate(frames):
        index = read_stamp(frame.image)
        # The recorded time is the true presentation time of the frame that was decoded.
        assert math.isclose(index * frame_duration, frame.media_ts, abs_tol=EPS), (index, frame.media_ts)
        if keyframes_only:
            assert index % round(gop / frame_duration) == 0, f"frame {index} is not a keyframe"
            assert abs(frame.media_ts - k * every) <= gop / 2 + EPS, (k, frame.media_ts)
        else:
            # Every target 0, t, 2t, ... in turn, no gaps and no drift.
            assert abs(frame.media_ts - k * every) <= frame_duration / 2 + EPS, (k, frame.media_ts)
    times = [f.media_ts for f in frames]
    assert times == sorted(times) and len(set(times)) == len(times)


def test_keyframes_only_when_every_matches_the_gop(clip_25fps, make_camera):
    source = VideoFileSource(make_camera(clip_25fps, every=2.0), replay=False)

    frames = list(source.scan())

    assert source.keyframes_only
    assert source.info.keyframe_interval == pytest.approx(2.0)
    assert [f.media_ts for f in frames] == pytest.approx([0.0, 2.0, 4.0, 6.0, 8.0])
    assert_exact_samples(frames, every=2.0, frame_duration=0.04, keyframes_only=True, gop=2.0)
    assert source.status.extra["mode"] == "keyframes-only"
    assert source.status.ended and source.status.last_error is None


def test_keyframes_only_takes_a_keyframe_within_half_a_gop_of_each_target(clip_25fps, make_camera):
    source = VideoFileSource(make_camera(clip_25fps, every=3.0), replay=False)

    frames = list(source.scan())

    assert source.keyframes_only
    # Targets 0, 3, 6, 9 -> the first keyframe within half a GOP (1 s) of each.
    assert [f.media_ts for f in frames] == pytest.approx([0.0, 2.0, 6.0, 8.0])
    assert_exact_samples(frames, every=3.0, frame_duration=0.04, keyframes_only=True, gop=2.0)


@pytest.mark.parametrize(
    ("fps", "every"),
    [
        (25, 0.5),
        (25, 0.7),  # not a multiple of the 40 ms frame duration
        (Fraction(30000, 1001), 0.7),  # nor of 33.37 ms
        (Fraction(30000, 1001), 2.0),  # 2.0 s < the 2.002 s GOP, so it must decode forward
    ],
    ids=["25fps-0.5s", "25fps-0.7s", "ntsc-0.7s", "ntsc-2s"],
)
def test_decode_forward_samples_are_within_half_a_frame(clip_factory, make_camera, fps, every):
    clip = clip_factory(f"fwd-{float(fps):.3f}.mp4", fps=fps, gop_seconds=2.0)
    source = VideoFileSource(make_camera(clip, every=every), replay=False)

    frames = list(source.scan())

    assert not source.keyframes_only
    assert source.status.extra["mode"] == "decode-forward"
    frame_duration = float(1 / Fraction(fps))
    assert source.info.frame_duration == pytest.approx(frame_duration)
    assert_exact_samples(frames, every=every, frame_duration=frame_duration, keyframes_only=False)
    last_frame_ts = (round(10.0 * fps) - 1) * frame_duration
    assert len(frames) == math.floor((last_frame_ts + frame_duration / 2) / every) + 1


def test_mpeg_ts_container_samples_the_same(clip_factory, make_camera):
    clip = clip_factory("clip.ts", seconds=6.0, gop_seconds=1.0)
    source = VideoFileSource(make_camera(clip, every=1.0), replay=False)

    frames = list(source.scan())

    assert source.keyframes_only
    assert [read_stamp(f.image) for f in frames] == [0, 25, 50, 75, 100, 125]
    assert_exact_samples(frames, every=1.0, frame_duration=0.04, keyframes_only=True, gop=1.0)


def test_frames_are_scaled_down_to_max_width_keeping_aspect(clip_factory, make_camera):
    clip = clip_factory("wide.mp4", seconds=2.0, width=640, height=360)
    source = VideoFileSource(make_camera(clip, every=1.0), max_width=256, replay=False)

    frames = list(source.scan())

    assert {f.image.shape for f in frames} == {(144, 256, 3)}
    assert [read_stamp(f.image) for f in frames] == [0, 25]
    assert scaled_size(1920, 1080, 1280) == (1280, 720)
    assert scaled_size(640, 480, 1280) == (640, 480)


def test_captured_at_uses_container_creation_time(clip_factory, make_camera):
    created = datetime(2024, 6, 1, 5, 30, 0, tzinfo=timezone.utc)
    clip = clip_factory("created.mp4", seconds=4.0, creation_time=created)
    source = VideoFileSource(make_camera(clip, every=2.0), replay=False)

    frames = list(source.scan())

    assert source.info.clock == "creation_time"
    assert [f.captured_at for f in frames] == [created, created + timedelta(seconds=2)]
    assert all(f.captured_at.tzinfo is not None for f in frames)


def test_captured_at_falls_back_to_mtime_minus_duration(tmp_path, make_camera):
    clip = make_clip(tmp_path / "plain.mp4", seconds=4.0, width=320, height=180)
    finished = datetime(2023, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    os.utime(clip, (finished.timestamp(), finished.timestamp()))
    source = VideoFileSource(make_camera(clip, every=2.0), replay=False)

    frames = list(source.scan())

    assert source.info.clock == "mtime"
    started = finished - timedelta(seconds=source.info.duration)
    assert frames[0].captured_at == started
    assert frames[1].captured_at == started + timedelta(seconds=2)


def test_origin_names_the_file_and_time(clip_25fps, make_camera):
    frames = list(VideoFileSource(make_camera(clip_25fps, every=4.0), replay=False).scan())
    assert frames[1].origin == f"{clip_25fps.name}#t=4.000"


def test_probe_reads_packets_only(clip_25fps):
    info = probe_video(clip_25fps)
    assert (info.width, info.height, info.codec) == (320, 180, "h264")
    assert info.keyframe_interval == pytest.approx(2.0)
    assert info.duration == pytest.approx(10.0)


# -- replay (poll) -------------------------------------------------------------------------


def test_replay_paces_at_real_time(clip_factory, make_camera):
    clip = clip_factory("three-seconds.mp4", seconds=3.0, gop_seconds=2.0)
    source = VideoFileSource(make_camera(clip, every=0.5), replay=True)
    polled: list[tuple[float, float, int]] = []
    source.start()
    started = time.monotonic()
    try:
        while time.monotonic() - started < 3.6:
            time.sleep(0.5)
            for frame in source.poll():
                polled.append((time.monotonic() - started, frame.media_ts, read_stamp(frame.image)))
    finally:
        source.close()

    assert len(polled) >= 5
    for wall, media_ts, index in polled:
        assert index * 0.04 == pytest.approx(media_ts, abs=EPS)
        # The newest frame shown by a real-time clock: never ahead, at most a bit behind.
        assert -0.05 <= wall - media_ts <= 0.25, polled
    assert source.status.ended
    assert source.poll() == []  # the last frame was already handed out


def test_replay_loops_when_asked(clip_factory, make_camera, wait_until):
    clip = clip_factory("one-second.mp4", seconds=1.0, gop_seconds=0.5)
    source = VideoFileSource(make_camera(clip, every=0.5, loop=True), replay=True)
    source.start()
    try:
        assert wait_until(lambda: source.status.extra.get("loops") == "2", timeout=5.0)
        assert source.poll(), "a looping replay keeps producing frames"
        assert not source.status.ended
    finally:
        source.close()
    assert not source.status.up


def test_poll_without_replay_hands_out_the_next_sample_each_time(clip_25fps, make_camera):
    source = VideoFileSource(make_camera(clip_25fps, every=4.0), replay=False)
    got = [source.poll() for _ in range(4)]
    assert [[f.media_ts for f in frames] for frames in got] == [[0.0], [4.0], [8.0], []]
    assert source.status.ended


def test_replay_of_a_missing_file_reports_in_status_without_raising(tmp_path, make_camera, clip_25fps, wait_until):
    clip = tmp_path / "gone.mp4"
    clip.write_bytes(clip_25fps.read_bytes())
    source = VideoFileSource(make_camera(clip, every=1.0), replay=True)
    clip.unlink()
    source.start()
    try:
        assert wait_until(lambda: source.status.ended, timeout=3.0)
        assert source.poll() == []
        assert "does not exist" in source.status.last_error
    finally:
        source.close()


# -- damaged and wrong files -------------------------------------------------------------------


def _audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=44100)
        for index in range(20):
            samples = np.sin(np.arange(1024, dtype=np.float32) * 0.05 + index)[None, :] * 0.3
            frame = av.AudioFrame.from_ndarray(samples.astype(np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 44100, index * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def _random_bytes(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(7).bytes(100_000))
    return path


def _text(path: Path) -> Path:
    path.write_text("this is a note, not a video\n" * 20)
    return path


def _truncated_mp4(path: Path) -> Path:
    clip = make_clip(path.with_name("whole.mp4"), seconds=4.0, width=160, height=96)
    data = clip.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.4)])  # moov is at the end: it is cut off
    return path


@pytest.mark.parametrize(
    ("name", "make", "expected"),
    [
        ("missing.mp4", lambda p: p, "does not exist"),
        ("random.mp4", _random_bytes, "cannot be read as a video"),
        ("audio.m4a", _audio_only, "has no video stream"),
        ("note.avi", _text, "cannot be read as a video"),
        ("cut.mp4", _truncated_mp4, "cannot be read as a video"),
    ],
    ids=["missing", "random-bytes", "audio-only", "text", "truncated-mp4-no-moov"],
)
def test_unreadable_files_raise_one_clear_line(tmp_path, make_camera, name, make, expected):
    path = make(tmp_path / name)
    if path.exists():
        camera = make_camera(path, every=1.0)
    else:
        camera = make_camera(tmp_path, every=1.0).model_copy(update={"path": str(path)})
    source = VideoFileSource(camera, replay=False)

    with pytest.raises(SourceError) as raised:
        list(source.scan())

    message = str(raised.value)
    assert expected in message and name in message
    assert "\n" not in message


def _truncate(clip: Path, dest: Path, share: float) -> Path:
    data = clip.read_bytes()
    dest.write_bytes(data[: int(len(data) * share)])
    return dest


@pytest.mark.parametrize("kind", ["ts", "fragmented-mp4"])
def test_truncated_file_keeps_the_samples_before_the_damage(clip_factory, tmp_path, make_camera, caplog, kind):
    if kind == "ts":
        clip = clip_factory("whole.ts", seconds=10.0)
    else:
        clip = clip_factory("whole-frag.mp4", seconds=10.0, fragmented=True)
    cut = _truncate(clip, tmp_path / f"cut-{clip.name}", 0.4)
    source = VideoFileSource(make_camera(cut, every=0.5), replay=False)

    with caplog.at_level(logging.WARNING):
        frames = list(source.scan())

    # About 40% of a 10 s clip is readable; every sample in it is still exact.
    assert 5 <= len(frames) <= 10
    assert_exact_samples(frames, every=0.5, frame_duration=0.04, keyframes_only=False)
    assert source.status.ended
    if kind == "fragmented-mp4":
        # A cut MP4 fragment fails to decode: that is reported, not raised.
        assert "truncated" in source.status.last_error and cut.name in source.status.last_error
        assert source.status.frames_failed >= 1
        assert "truncated" in caplog.text
    # (A cut MPEG-TS just ends: FFmpeg reports nothing, so neither can we.)


# -- a real clip ------------------------------------------------------------------------------


@pytest.mark.parametrize("every", [1.0, 5.0])
def test_real_clip_is_sampled_on_its_targets(data_dir, make_camera, every):
    clip = data_dir / "videos" / "animalyolo_deer.mp4"
    if not clip.exists():
        pytest.skip(f"{clip} is not in the test data")
    source = VideoFileSource(make_camera(clip, every=every), max_width=320, replay=False)

    frames = list(source.scan())

    info = source.info
    assert frames and source.status.last_error is None
    assert all(f.width <= 320 and f.image.std() > 1 for f in frames)  # real pictures, not blank
    times = [f.media_ts for f in frames]
    assert times == sorted(times)
    if source.keyframes_only:
        assert all(t >= k * every - info.frame_duration / 2 - EPS for k, t in enumerate(times))
    else:
        for k, media_ts in enumerate(times):
            assert abs(media_ts - k * every) <= info.frame_duration / 2 + EPS
    assert len(frames) == pytest.approx(info.duration / every, abs=1.5)


def test_probe_is_not_fooled_by_a_late_keyframe(clip_factory):
    # Keyframes at 0, 1 and 13 s: the probe window (10 s) ends 9 s after the last one seen.
    clip = clip_factory("late-key.mp4", seconds=16.0, gop_seconds=100.0, keyframes_at=(0, 25, 325))
    assert probe_video(clip).keyframe_interval >= 9.0


def test_keyframes_only_falls_back_where_keyframes_are_missing(clip_factory, make_camera):
    # Regular 0.5 s keyframes where the probe looks, then none from 3 s to 12 s.
    keys = (*range(0, 76, 12), 300, 312, 325, 337, 350, 362, 375)
    clip = clip_factory("irregular.mp4", seconds=16.0, gop_seconds=100.0, keyframes_at=keys)
    source = VideoFileSource(make_camera(clip, every=1.0), replay=False, probe_seconds=2.0)

    frames = list(source.scan())

    assert source.keyframes_only and source.info.keyframe_interval == pytest.approx(0.48)
    times = [f.media_ts for f in frames]
    assert len(times) == 16, times  # one per second, none lost in the keyframe gap
    for k, (frame, media_ts) in enumerate(zip(frames, times, strict=True)):
        assert read_stamp(frame.image) * 0.04 == pytest.approx(media_ts, abs=EPS)
        in_gap = 3.0 < k < 12.0
        # In the gap the frames are decoded forward: exact to half a frame.
        assert abs(media_ts - k) <= (0.02 if in_gap else 0.24) + EPS, (k, media_ts)
