"""Scan speed: our `monitor scan` path against a naive OpenCV loop, in one run.

On a generated 720p H.264 clip with a 2 s keyframe interval, sampled every 2 s:

* ours: the real `monitor scan` path (PyAV source decoding keyframes only, frames scaled
  at decode time, batched ONNX inference, routing, SQLite + snapshot writes), with one
  centred square per still like the baseline, and again with the default whole-frame
  squares (two per 16:9 still: twice the inference);
* baseline: OpenCV reads every frame, and every 2 s of video one frame is converted and
  classified on its own with the same model (nothing stored).

Prints video-seconds processed per wall-second for each, and their ratio.
Target on a 2-core CPU: ours at least 5x the baseline.

    .venv/bin/python bench/scan.py [--seconds 120] [--every 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from monitor.app import build_core, scan_sources  # noqa: E402
from monitor.config import CameraConfig, MonitorConfig, SiteConfig  # noqa: E402
from monitor.model import load_model  # noqa: E402
from monitor.sources.synthetic import make_clip  # noqa: E402


def run_ours(clip: Path, every: float, workdir: Path, classifier, tile_scale: int) -> tuple[float, int]:
    camera = CameraConfig(id="bench", path=str(clip), every=every)
    config = MonitorConfig(
        database=f"sqlite:///{workdir}/bench-{tile_scale}.db", snapshots=workdir / "snapshots",
        sites=[SiteConfig(id="bench", cameras=[camera])], metrics={"enabled": False},
        pipeline={"tile_scale": tile_scale},
    )
    core = build_core(config, classifier=classifier)
    started = time.perf_counter()
    results = scan_sources(core, config.cameras())
    wall = time.perf_counter() - started
    core.close()
    if results[0].error:
        raise SystemExit(f"scan failed: {results[0].error}")
    return wall, results[0].samples


def run_baseline(clip: Path, every: float, classifier) -> tuple[float, int]:
    import cv2

    started = time.perf_counter()
    capture = cv2.VideoCapture(str(clip))
    fps = capture.get(cv2.CAP_PROP_FPS)
    step = max(1, round(every * fps))
    index = samples = 0
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        if index % step == 0:
            classifier.predict_batch([cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)])
            samples += 1
        index += 1
    capture.release()
    return time.perf_counter() - started, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="length of the generated clip")
    parser.add_argument("--every", type=float, default=2.0, help="sample interval in seconds")
    parser.add_argument("--model-cache", type=Path, default=Path("monitor-data/models"))
    args = parser.parse_args()

    classifier = load_model("builtin:imagenet-bears", cache_dir=args.model_cache)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        clip = make_clip(workdir / "bench-720p.mp4", seconds=args.seconds, fps=25, width=1280, height=720,
                         gop_seconds=2.0, stamp_index=False)
        classifier.predict_batch([__import__("numpy").zeros((720, 1280, 3), "uint8")])  # warm up
        ours_wall, ours_samples = run_ours(clip, args.every, workdir, classifier, tile_scale=0)
        tiled_wall, tiled_samples = run_ours(clip, args.every, workdir, classifier, tile_scale=1)
        base_wall, base_samples = run_baseline(clip, args.every, classifier)

    ours_speed = args.seconds / ours_wall
    base_speed = args.seconds / base_wall
    print(f"clip: {args.seconds:.0f} s of 1280x720 H.264 at 25 fps, keyframe every 2 s; sample every {args.every:g} s")
    print(f"{'path':<44} {'samples':>8} {'wall s':>8} {'video s / wall s':>17}")
    print(f"{'ours (monitor scan: PyAV keyframes, batched)':<44} {ours_samples:>8} {ours_wall:>8.2f} {ours_speed:>17.1f}")
    print(f"{'ours + whole-frame squares (2 per frame)':<44} {tiled_samples:>8} {tiled_wall:>8.2f} "
          f"{args.seconds / tiled_wall:>17.1f}")
    print(f"{'baseline (OpenCV every frame, one by one)':<44} {base_samples:>8} {base_wall:>8.2f} {base_speed:>17.1f}")
    print(f"ratio: ours is {ours_speed / base_speed:.1f}x the baseline with the same one square per still "
          f"(target >= 5x); {args.seconds / tiled_wall / base_speed:.1f}x with whole-frame squares")


if __name__ == "__main__":
    main()
