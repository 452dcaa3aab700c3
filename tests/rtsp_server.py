#!/usr/bin/python3
"""A small real RTSP server for tests, built on GStreamer's GstRtspServer.

Run it with the *system* Python (``/usr/bin/python3``): the ``gi`` bindings come from
Debian packages and are not in the project's venv. It serves one mount point, either

* ``--file clip.mp4``: the file's H.264 stream, looped forever at real time (the access
  units are read once, then pushed again and again with growing timestamps), or
* the default: ``videotestsrc ! x264enc ! rtph264pay``, a live moving test pattern.

Once it listens it prints ``READY rtsp://127.0.0.1:PORT/PATH`` on stdout; it stops on
SIGTERM or SIGINT. Each client gets its own session, starting at the file's beginning.

Usage:
    /usr/bin/python3 tests/rtsp_server.py --port 8554 --path cam [--file clip.mp4]
"""

from __future__ import annotations

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def read_access_units(path: str) -> tuple[list[tuple[bytes, int, int]], Gst.Caps]:
    """Demux a file's H.264 stream into (data, pts, duration) access units and their caps."""
    pipeline = Gst.parse_launch(
        f'filesrc location="{path}" ! parsebin ! h264parse config-interval=-1 ! '
        "video/x-h264,stream-format=byte-stream,alignment=au ! appsink name=sink sync=false"
    )
    sink = pipeline.get_by_name("sink")
    pipeline.set_state(Gst.State.PLAYING)
    units: list[tuple[bytes, int, int]] = []
    caps = None
    while True:
        sample = sink.emit("try-pull-sample", 10 * Gst.SECOND)
        if sample is None:
            break
        caps = caps or sample.get_caps()
        buffer = sample.get_buffer()
        units.append((buffer.extract_dup(0, buffer.get_size()), buffer.pts, buffer.duration))
    pipeline.set_state(Gst.State.NULL)
    if not units or caps is None:
        raise SystemExit(f"rtsp_server: no H.264 video found in {path}")
    return units, caps


class LoopingFileFactory(GstRtspServer.RTSPMediaFactory):
    """Serves pre-read access units from an appsrc, looping with growing timestamps."""

    def __init__(self, units: list[tuple[bytes, int, int]], caps: Gst.Caps) -> None:
        super().__init__()
        self.units = units
        self.caps = caps
        last_pts, last_duration = units[-1][1], units[-1][2]
        frame = last_duration if last_duration != Gst.CLOCK_TIME_NONE else Gst.SECOND // 25
        self.loop_length = last_pts + frame
        self.set_launch(
            "( appsrc name=src format=time is-live=false block=false max-bytes=2000000 "
            "! h264parse ! rtph264pay name=pay0 pt=96 config-interval=1 )"
        )
        self.connect("media-configure", self._configure)

    def _configure(self, _factory: object, media: GstRtspServer.RTSPMedia) -> None:
        appsrc = media.get_element().get_by_name("src")
        appsrc.set_property("caps", self.caps)
        state = {"index": 0}
        appsrc.connect("need-data", self._feed, state)

    def _feed(self, appsrc: Gst.Element, _length: int, state: dict[str, int]) -> None:
        for _ in range(10):
            index = state["index"]
            data, pts, duration = self.units[index % len(self.units)]
            buffer = Gst.Buffer.new_wrapped(data)
            buffer.pts = pts + (index // len(self.units)) * self.loop_length
            buffer.dts = Gst.CLOCK_TIME_NONE
            buffer.duration = duration
            state["index"] = index + 1
            if appsrc.emit("push-buffer", buffer) != Gst.FlowReturn.OK:
                return


def pattern_factory(width: int, height: int, fps: int, gop: int) -> GstRtspServer.RTSPMediaFactory:
    """A live moving test pattern encoded with x264, one keyframe every ``gop`` frames."""
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        f"( videotestsrc is-live=true pattern=ball ! video/x-raw,width={width},height={height},"
        f"framerate={fps}/1 ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={gop} "
        "! rtph264pay name=pay0 pt=96 config-interval=1 )"
    )
    factory.set_shared(True)
    return factory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="cam", help="mount point, without the leading /")
    parser.add_argument("--file", help="serve this H.264 file looped instead of a test pattern")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=180)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--gop", type=int, default=25, help="test pattern keyframe interval, frames")
    args = parser.parse_args(argv)

    Gst.init(None)
    if args.file:
        factory = LoopingFileFactory(*read_access_units(args.file))
    else:
        factory = pattern_factory(args.width, args.height, args.fps, args.gop)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    server.get_mount_points().add_factory("/" + args.path.lstrip("/"), factory)
    loop = GLib.MainLoop()
    if server.attach(None) == 0:
        print(f"rtsp_server: cannot listen on 127.0.0.1:{args.port}", file=sys.stderr)
        return 1
    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signum, loop.quit)
    print(f"READY rtsp://127.0.0.1:{args.port}/{args.path.lstrip('/')}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
