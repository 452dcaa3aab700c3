"""create_source picks the backend from the url scheme or the kind of path."""

from __future__ import annotations

import pytest

from monitor.config import LIVE_SCHEMES
from monitor.sources import SOURCE_KINDS, create_source, register_source, source_kind
from monitor.sources.base import Source, SourceError
from monitor.sources.live import LiveSource
from monitor.sources.stills import StillsSource
from monitor.sources.video_file import VideoFileSource


@pytest.mark.parametrize(
    "url",
    [
        "rtsp://admin:secret@10.0.0.5:554/stream1",
        "rtsps://cam.local/live",
        "http://cam.local/video.mjpg",
        "https://cdn.example/live/index.m3u8",
    ],
)
def test_stream_urls_make_live_sources_without_connecting(make_camera, url):
    source = create_source(make_camera(url, every=2.0, open_timeout=1.0))
    assert isinstance(source, LiveSource)
    assert not source.finite
    assert not source.status.up and source.poll() == []  # nothing opened before start()
    assert "secret" not in source.status.extra["url"]
    source.close()


def test_every_configured_live_scheme_has_a_backend():
    assert set(LIVE_SCHEMES) <= set(SOURCE_KINDS)


def test_a_file_makes_a_video_file_source(clip_25fps, make_camera):
    camera = make_camera(clip_25fps, every=2.0, replay=True)
    polled = create_source(camera)
    scanned = create_source(camera, scan=True, max_width=160)
    assert isinstance(polled, VideoFileSource) and polled.replay
    assert isinstance(scanned, VideoFileSource) and not scanned.replay
    assert scanned.max_width == 160 and scanned.finite


def test_a_folder_makes_a_stills_source(tmp_path, make_camera):
    source = create_source(make_camera(tmp_path, every=2.0))
    assert isinstance(source, StillsSource) and source.finite
    assert source_kind(make_camera(tmp_path)) == "dir"


def test_a_path_that_vanished_is_a_clear_error(tmp_path, make_camera):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"x")
    camera = make_camera(clip)
    clip.unlink()
    with pytest.raises(SourceError, match="does not exist"):
        create_source(camera)


def test_a_registered_backend_is_used(make_camera, monkeypatch):
    class Fake(Source):
        def poll(self):
            return []

    monkeypatch.setitem(SOURCE_KINDS, "srt", SOURCE_KINDS["srt"])
    register_source("SRT", lambda camera, scan, max_width: Fake(camera.id))
    assert isinstance(create_source(make_camera("srt://10.0.0.9:9000")), Fake)


def test_an_unknown_scheme_names_the_known_ones_without_credentials(make_camera, monkeypatch):
    monkeypatch.delitem(SOURCE_KINDS, "udp")
    with pytest.raises(SourceError) as raised:
        create_source(make_camera("udp://user:pw@239.0.0.1:1234"))
    assert "rtsp://" in str(raised.value) and "pw" not in str(raised.value)
