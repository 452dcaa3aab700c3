"""`monitor run` as a long-running process against real cameras.

A real GStreamer RTSP server (with credentials in its URL), a replayed video file and a
dead camera, sampled by the real process with the real model; /metrics is scraped over
HTTP; the RTSP server is stopped and restarted mid-run; SIGTERM stops the process
cleanly with everything sampled stored; credentials never leak.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from db_backends import dump_text, query
from monitor.sources.synthetic import make_clip
from running_monitor import RunningMonitor

SECRET = "hunter2-secret"


def sample_value(metrics: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return None


def frames(metrics: str, camera: str) -> float:
    return sample_value(metrics, "monitor_frames_sampled_total", site="park", camera=camera) or 0.0


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    return make_clip(tmp_path / "replay.mp4", seconds=60, fps=25, width=640, height=360, gop_seconds=1.0)


@pytest.mark.rtsp
def test_run_samples_live_and_file_cameras_survives_an_outage_and_stops_cleanly(
    tmp_path, clip, model_cache, rtsp_server, free_port, database_url
):
    server = rtsp_server(path="gate", file=clip)
    dead_port = free_port()
    config = {
        "database": database_url,
        "snapshots": str(tmp_path / "data" / "snapshots"),
        "model_cache": str(model_cache),
        "pipeline": {"batch_wait": "20ms"},
        "rollout": {"routing": {"manual": {"negative_sample_rate": 1.0}}},
        "metrics": {"port": 0},
        "sites": [{"id": "park", "cameras": [
            {"id": "gate", "url": server.url(f"viewer:{SECRET}"), "every": "1s", "open_timeout": "3s",
             "read_timeout": "3s"},
            {"id": "replay", "path": str(clip), "every": "1s"},
            {"id": "dead", "url": f"rtsp://admin:{SECRET}@127.0.0.1:{dead_port}/none", "every": "1s",
             "open_timeout": "2s"},
        ]}],
    }
    (tmp_path / "monitor.yaml").write_text(yaml.safe_dump(config))
    monitor = RunningMonitor(["run", "-c", "monitor.yaml"], cwd=tmp_path)
    try:
        assert monitor.wait_for(lambda m: frames(m, "gate") >= 3 and frames(m, "replay") >= 3, timeout=60), \
            monitor.log.read_text()
        metrics = monitor.scrape()
        assert sample_value(metrics, "monitor_source_up", site="park", camera="gate") == 1
        assert sample_value(metrics, "monitor_source_up", site="park", camera="dead") == 0
        assert SECRET not in metrics and "127.0.0.1:" + str(dead_port) not in metrics

        # The camera's server goes away: the file camera keeps sampling meanwhile.
        server.stop()
        assert monitor.wait_for(
            lambda m: sample_value(m, "monitor_source_up", site="park", camera="gate") == 0, timeout=15)
        replay_before = frames(monitor.scrape(), "replay")
        time.sleep(3)
        assert frames(monitor.scrape(), "replay") >= replay_before + 2

        # ... and comes back: sampling resumes within 10 s.
        gate_before = frames(monitor.scrape(), "gate")
        server.start()
        back = time.monotonic()
        assert monitor.wait_for(lambda m: frames(m, "gate") > gate_before, timeout=10)
        assert time.monotonic() - back <= 10
        reconnects = sample_value(monitor.scrape(), "monitor_source_reconnects_total", site="park", camera="gate")
        assert reconnects and reconnects >= 1

        sampled = frames(monitor.scrape(), "gate") + frames(monitor.scrape(), "replay")
        assert monitor.stop() == 0
    finally:
        monitor.kill()

    log = monitor.log.read_text()
    assert SECRET not in log and "viewer" not in log
    assert "stopped cleanly" in log
    rows = query(database_url, "select camera_id, snapshot from review_items")
    # Everything sampled before SIGTERM was classified and stored (sampling may add a few more).
    assert len(rows) >= sampled
    for _, snapshot in rows:
        assert (tmp_path / "data" / "snapshots" / snapshot).is_file()
    stored_files = list((tmp_path / "data" / "snapshots").rglob("*.jpg"))
    assert len(stored_files) == len(rows)
    assert not list((tmp_path / "data" / "snapshots").rglob("*.tmp*"))
    dump = dump_text(database_url)
    assert SECRET not in dump and "rtsp://***@127.0.0.1" in dump


def test_run_without_config_plays_the_generated_demo(tmp_path, model_cache):
    data = tmp_path / "monitor-data"
    data.mkdir()
    (data / "models").symlink_to(model_cache, target_is_directory=True)  # reuse the session's build
    monitor = RunningMonitor(["run", "--metrics-port", "0"], cwd=tmp_path)
    try:
        assert monitor.wait_for(
            lambda m: (sample_value(m, "monitor_frames_sampled_total", site="demo", camera="demo") or 0) >= 2,
            timeout=60), monitor.log.read_text()
        assert monitor.stop() == 0
    finally:
        monitor.kill()
    assert (data / "demo" / "demo.mp4").is_file() and (data / "monitor.db").is_file()
    predictions = sqlite3.connect(data / "monitor.db").execute("select sum(frames) from camera_hours").fetchone()[0]
    assert predictions >= 2
