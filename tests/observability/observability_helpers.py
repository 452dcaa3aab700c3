"""Helpers for the observability tests: a real Prometheus, a clip made from real photos,
and the history a site's database is given before a run (`monitor run` itself:
tests/running_monitor.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
from datetime import datetime, timedelta
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import yaml
from PIL import Image

from running_monitor import http_get

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = "/usr/bin/prometheus"
PROMTOOL = "/usr/bin/promtool"
RULES = REPO / "dashboards" / "prometheus" / "rules.yml"
ALERTS = REPO / "dashboards" / "prometheus" / "alerts.yml"
GRAFANA = REPO / "dashboards" / "grafana"


class Prometheus:
    """A real Prometheus (Debian's) scraping one target every second, with our rules."""

    def __init__(self, folder: Path, *, target: str, port: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES), str(ALERTS)],
            "scrape_configs": [{"job_name": "monitor", "static_configs": [{"targets": [target]}]}],
        }
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{port}"
        self.log = folder / "prometheus.log"
        self._log_file = self.log.open("w")
        self.process = subprocess.Popen(
            [PROMETHEUS, f"--config.file={folder / 'prometheus.yml'}", f"--storage.tsdb.path={folder / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=self._log_file, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"prometheus exited:\n{self.log.read_text()}")
            try:
                if http_get(f"{self.url}/-/ready", timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"prometheus did not become ready:\n{self.log.read_text()}")

    def query(self, expr: str) -> list[dict]:
        """The instant query's result vector; raises on a query error."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        try:
            body = json.loads(http_get(url))
        except urllib.error.HTTPError as exc:  # 400/422: a bad expression
            raise AssertionError(f"query {expr!r} failed: {exc.read().decode()}") from None
        assert body["status"] == "success", body
        return body["data"]["result"]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log_file.close()


def cover(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Scale and centre-crop an RGB image to exactly width x height (no bars)."""
    h, w = image.shape[:2]
    scale = max(width / w, height / h)
    resized = np.asarray(Image.fromarray(image).resize((round(w * scale) + 1, round(h * scale) + 1), Image.LANCZOS))
    top = (resized.shape[0] - height) // 2
    left = (resized.shape[1] - width) // 2
    return np.ascontiguousarray(resized[top:top + height, left:left + width])


def make_slideshow(path: Path, slides: list[np.ndarray], *, seconds_each: float, fps: int = 4,
                   cycles: int = 1) -> Path:
    """Encode an H.264 clip showing each slide (RGB, all the same even size) in turn."""
    height, width = slides[0].shape[:2]
    per_slide = round(seconds_each * fps)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps), options={"g": str(fps), "preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        index = 0
        for _ in range(cycles):
            for slide in slides:
                for _ in range(per_slide):
                    frame = av.VideoFrame.from_ndarray(slide, format="rgb24")
                    frame.pts = index
                    index += 1
                    container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def hours_back(now: datetime, first: int, last: int) -> list[datetime]:
    """The starts of the hours from ``first`` to ``last`` hours before ``now`` (first > last)."""
    from monitor.store.tables import utc_hour

    return [utc_hour(now - timedelta(hours=h)) for h in range(first, last - 1, -1)]


def have_prometheus() -> str | None:
    """None when Prometheus and promtool are installed, else why not."""
    missing = [tool for tool in (PROMETHEUS, PROMTOOL) if not shutil.which(tool)]
    if missing:
        return f"{', '.join(missing)} not installed (Debian package `prometheus`; scripts/setup-test-env installs it)"
    return None
