"""Live sources against real servers: GStreamer RTSP, HTTP MJPEG and HLS over http.server.

RTSP tests need GStreamer's RTSP server for the system Python and skip with the reason
when it is missing; the unreachable-camera tests need no server at all.
"""

from __future__ import annotations

import functools
import http.server
import io
import logging
import random
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import av.logging
import pytest
from PIL import Image

from monitor.sources.live import LiveSource, backoff_delay
from monitor.sources.synthetic import read_stamp

SECRET = "s3cr3tPa55"
FAST_BACKOFF = {"backoff_base": 0.2, "backoff_cap": 1.0}


def live(make_camera, url: str, *, camera_id: str = "cam1", every: float = 1.0, **kwargs) -> LiveSource:
    timeouts = {"open_timeout": kwargs.pop("open_timeout", 5.0), "read_timeout": kwargs.pop("read_timeout", 2.0)}
    return LiveSource(make_camera(url, camera_id=camera_id, every=every, **timeouts), **{**FAST_BACKOFF, **kwargs})


def take(source: LiveSource, wait_until, timeout: float = 10.0):
    """Poll until a frame comes; return it."""
    got: list = []
    assert wait_until(lambda: got.extend(source.poll()) or bool(got), timeout), source.status
    return got[-1]


# -- backoff -----------------------------------------------------------------------------------


def test_backoff_is_full_jitter_exponential_and_capped():
    rng = random.Random(1)
    for attempt, ceiling in [(0, 0.5), (1, 1.0), (3, 4.0), (6, 30.0), (500, 30.0)]:
        delays = [backoff_delay(attempt, base=0.5, cap=30.0, rng=rng) for _ in range(300)]
        assert min(delays) >= 0.0 and max(delays) <= ceiling
        assert max(delays) > 0.8 * ceiling  # spread over the whole range: full jitter


# -- RTSP ----------------------------------------------------------------------------------------


@pytest.mark.rtsp
def test_rtsp_frames_arrive_and_poll_never_blocks(rtsp_server, make_camera, wait_until):
    server = rtsp_server()
    with live(make_camera, server.url(), max_width=160) as source:
        frame = take(source, wait_until)
        assert source.status.up and source.status.last_error is None
        assert frame.image.shape == (90, 160, 3) and frame.media_ts is None
        assert abs(frame.captured_at - datetime.now(timezone.utc)) < timedelta(seconds=5)
        assert frame.origin == server.url()
        started = time.monotonic()
        for _ in range(20):
            source.poll()
        assert time.monotonic() - started < 0.5
        assert source.status.last_frame_at is not None


@pytest.mark.rtsp
def test_rtsp_decodes_keyframes_only_when_every_covers_the_gop(rtsp_server, clip_factory, make_camera, wait_until):
    clip = clip_factory("rtsp-gop.mp4", seconds=20.0, gop_seconds=0.4)
    server = rtsp_server(file=clip)
    with live(make_camera, server.url(), every=1.0) as sparse, live(make_camera, server.url(), every=0.2) as dense:
        assert wait_until(lambda: sparse.keyframe_interval is not None and dense.keyframe_interval is not None, 10)
        assert sparse.keyframe_interval == pytest.approx(0.4, abs=0.01)
        assert sparse.keyframes_only and sparse.status.extra["mode"] == "keyframes-only"
        assert not dense.keyframes_only and dense.status.extra["mode"] == "decode-all"
        sparse.poll()  # drop a frame decoded before the mode switched
        stamps = []
        for _ in range(4):
            time.sleep(0.3)
            stamps += [read_stamp(f.image) for f in sparse.poll()]
        assert stamps and all(index % 10 == 0 for index in stamps), stamps


@pytest.mark.rtsp
def test_rtsp_goes_back_to_decoding_all_after_a_long_keyframe_gap(rtsp_server, clip_factory, make_camera, wait_until):
    # Keyframes every 0.4 s for 2 s, then none until 5 s.
    clip = clip_factory("rtsp-late-key.mp4", seconds=8.0, gop_seconds=100.0, keyframes_at=(0, 10, 20, 30, 40, 50, 125))
    server = rtsp_server(file=clip)
    with live(make_camera, server.url(), every=1.0, read_timeout=5.0) as source:
        assert wait_until(lambda: source.keyframes_only, 6)
        assert wait_until(lambda: source.status.extra.get("mode") == "decode-all", 8)
        assert not source.keyframes_only and source.keyframe_interval == pytest.approx(3.0, abs=0.05)
        take(source, wait_until)


@pytest.mark.rtsp
def test_rtsp_reconnects_after_the_server_returns_while_others_keep_going(
    rtsp_server, clip_factory, make_camera, wait_until
):
    flaky_server = rtsp_server(path="flaky")
    steady_server = rtsp_server(path="steady", file=clip_factory("steady.mp4", seconds=20.0))
    flaky = live(make_camera, flaky_server.url(), camera_id="flaky", every=0.5, read_timeout=2.0)
    steady = live(make_camera, steady_server.url(), camera_id="steady", every=0.5)
    with flaky, steady:
        take(flaky, wait_until)
        take(steady, wait_until)

        flaky_server.stop()
        outage_started = time.monotonic()
        steady_frames = 0
        while time.monotonic() - outage_started < 3.0:
            time.sleep(0.25)
            flaky.poll()
            steady_frames += len(steady.poll())
        assert not flaky.status.up and flaky.status.last_error
        assert steady_frames >= 10, "the steady camera must not be held up by the dead one"

        flaky_server.start()
        back_at = datetime.now(timezone.utc)
        back = time.monotonic()
        frame = take(flaky, wait_until, timeout=10.0)
        assert frame.captured_at > back_at
        assert time.monotonic() - back < 10.0
        assert flaky.status.up and flaky.status.reconnects >= 1
        assert steady.status.reconnects == 0


@pytest.mark.rtsp
def test_rtsp_wrong_path_is_down_with_a_clear_error(rtsp_server, make_camera, wait_until):
    server = rtsp_server(path="cam")
    with live(make_camera, server.url().replace("/cam", "/nope")) as source:
        assert wait_until(lambda: source.status.last_error is not None, 5)
        assert not source.status.up
        assert "404" in source.status.last_error and "check the path" in source.status.last_error


@pytest.mark.rtsp
def test_rtsp_credentials_never_leak(rtsp_server, make_camera, wait_until, caplog):
    server = rtsp_server(path="cam")
    closed = _closed_port()
    urls = {
        "good": server.url(f"admin:{SECRET}"),
        "wrong-path": server.url(f"admin:{SECRET}").replace("/cam", "/nope"),
        "closed-port": f"rtsp://admin:{SECRET}@127.0.0.1:{closed}/x?token={SECRET}",
    }
    caplog.set_level(logging.DEBUG)
    # Forward FFmpeg's own log lines too, the usual place URLs get quoted.
    previous_level = av.logging.get_level()
    av.logging.set_level(av.logging.VERBOSE)
    try:
        sources = [live(make_camera, url, camera_id=name) for name, url in urls.items()]
        for source in sources:
            source.start()
        assert wait_until(lambda: all(s.status.last_error or s.status.up for s in sources), 10)
        frames = take(sources[0], wait_until)
        for source in sources:
            source.close()
    finally:
        av.logging.set_level(previous_level)

    visible = [caplog.text, repr(frames.origin)] + [repr(s.status) for s in sources]
    assert all(SECRET not in text for text in visible), [t for t in visible if SECRET in t]
    assert sources[2].status.last_error.startswith(f"rtsp://***@127.0.0.1:{closed}/x?token=***: connection refused")


# -- unreachable cameras (no server needed) --------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_closed_port_is_down_with_a_clear_error(make_camera, wait_until, caplog):
    url = f"rtsp://user:{SECRET}@127.0.0.1:{_closed_port()}/stream"
    with caplog.at_level(logging.DEBUG), live(make_camera, url) as source:
        assert wait_until(lambda: source.status.reconnects >= 2, 5), "keeps retrying with backoff"
        assert not source.status.up
        assert "connection refused" in source.status.last_error
        assert source.poll() == []
    assert SECRET not in caplog.text and SECRET not in repr(source.status)
    # Loud once, then quiet: a dead camera must not flood the log.
    assert sum(r.levelno == logging.WARNING for r in caplog.records) == 1


def test_unroutable_address_gives_up_after_open_timeout(make_camera, wait_until):
    # Only one connection attempt: a long backoff keeps it from being retried.
    url = f"rtsp://user:{SECRET}@10.255.255.1:554/stream"
    source = live(make_camera, url, open_timeout=1.0, read_timeout=1.0, backoff_base=60.0, backoff_cap=60.0)
    source.start()
    assert wait_until(lambda: source.status.last_error is not None, 4.0)
    started = time.monotonic()
    source.close()
    assert time.monotonic() - started < 1.0
    assert not source.status.up and source.status.reconnects == 0
    assert source.status.last_error.startswith("rtsp://***@10.255.255.1:554/stream: ")


def test_a_silent_camera_never_blocks_poll_and_close_is_bounded(make_camera):
    # Accepts TCP connections (the kernel's backlog) but never says a word.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"rtsp://127.0.0.1:{listener.getsockname()[1]}/x"
        source = live(make_camera, url, open_timeout=1.5, read_timeout=1.5)
        source.start()
        time.sleep(0.3)
        started = time.monotonic()
        assert source.poll() == []
        assert time.monotonic() - started < 0.05
        started = time.monotonic()
        source.close()
        assert time.monotonic() - started < 1.5 + 1.0
        assert not source.status.up


# -- HTTP: MJPEG and HLS -------------------------------------------------------------------------------


class _MjpegHandler(http.server.BaseHTTPRequestHandler):
    """multipart/x-mixed-replace JPEGs at 10 fps, like a cheap IP camera's video.mjpg."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path != "/video.mjpg":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        try:
            for index in range(10_000):
                buffer = io.BytesIO()
                Image.new("RGB", (320, 240), (index * 10 % 256, 80, 160)).save(buffer, "JPEG")
                data = buffer.getvalue()
                self.wfile.write(
                    b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(data) + data + b"\r\n"
                )
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args: object) -> None:
        pass


class _QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_server():
    """start(handler) -> base URL of a threaded http.server on 127.0.0.1."""
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(handler: Callable[..., http.server.BaseHTTPRequestHandler]) -> str:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_http_mjpeg_stream(http_server, make_camera, wait_until):
    base = http_server(_MjpegHandler)
    with live(make_camera, f"{base}/video.mjpg", every=0.5) as source:
        first = take(source, wait_until)
        second = take(source, wait_until)
        assert first.image.shape == (240, 320, 3)
        assert second.captured_at > first.captured_at
        assert source.status.up


def test_hls_playlist(http_server, clip_factory, make_camera, wait_until, tmp_path):
    clip = clip_factory("hls-source.mp4", seconds=4.0, gop_seconds=1.0)
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(clip), "-c", "copy", "-f", "hls", "-hls_time", "1",
         "-hls_list_size", "0", str(tmp_path / "live.m3u8")],
        check=True, timeout=30,
    )
    base = http_server(functools.partial(_QuietFiles, directory=str(tmp_path)))
    with live(make_camera, f"{base}/live.m3u8", every=1.0) as source:
        frame = take(source, wait_until)
        assert frame.image.shape == (180, 320, 3)
        assert 0 <= read_stamp(frame.image) < 100
