"""`monitor scan` and `monitor queue list` end to end, as a user runs them.

Real files, the real built-in model, a real SQLite file and snapshot folder. Bad inputs
give one line and a sensible exit code, and one bad file does not stop the others.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from db_backends import query
from monitor.sources.synthetic import make_clip
from running_monitor import run_monitor


@pytest.fixture
def workdir(tmp_path: Path, model_cache: Path, database_url: str) -> Path:
    """A folder with a config that reviews every still (so each sample becomes a row)."""
    config = {
        "database": database_url,
        "snapshots": str(tmp_path / "data" / "snapshots"),
        "model_cache": str(model_cache),
        "rollout": {"routing": {"manual": {"negative_sample_rate": 1.0}}},
    }
    (tmp_path / "monitor.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("clips") / "trail.mp4", seconds=20, fps=25, width=640, height=360)


def queue_rows(workdir: Path) -> list[dict]:
    listed = run_monitor("queue", "list", "-c", "monitor.yaml", "--json", "--limit", "1000", cwd=workdir)
    assert listed.returncode == 0, listed.stderr
    return [json.loads(line) for line in listed.stdout.splitlines()]


def test_scan_fills_the_queue_with_a_row_and_a_snapshot_per_sample(workdir, clip):
    scanned = run_monitor("scan", str(clip), "--every", "2s", "-c", "monitor.yaml", "--json", cwd=workdir)
    assert scanned.returncode == 0, scanned.stderr
    summary = json.loads(scanned.stdout)
    (source,) = summary["sources"]
    assert source["samples"] == 10 and source["classified"] == 10 and source["error"] is None
    rows = queue_rows(workdir)
    assert len(rows) == 10
    assert sorted(r["media_ts"] for r in rows) == pytest.approx([0, 2, 4, 6, 8, 10, 12, 14, 16, 18], abs=0.04)
    for row in rows:
        assert row["status"] == "pending" and row["reason"] == "negative_sample"
        assert row["model_id"].startswith("builtin:imagenet-bears@")
        assert set(row["probabilities"]) == {"grizzly", "black", "polar", "sloth", "panda", "teddy", "none"}
        assert (workdir / "data" / "snapshots" / row["snapshot"]).stat().st_size > 1000
    database = yaml.safe_load((workdir / "monitor.yaml").read_text())["database"]
    ((hourly,),) = query(database, "select sum(predictions) from label_hours")
    assert hourly == 10


def test_scan_summary_table_is_printed(workdir, clip):
    scanned = run_monitor("scan", str(clip), "--every", "5s", "-c", "monitor.yaml", cwd=workdir)
    assert scanned.returncode == 0, scanned.stderr
    assert "scan summary" in scanned.stdout and "trail.mp4" in scanned.stdout
    assert "x real time" in scanned.stdout


def test_scan_a_real_clip(workdir, data_dir):
    clip = data_dir / "videos" / "zamba_chimp.mp4"
    scanned = run_monitor("scan", str(clip), "-c", "monitor.yaml", "--json", cwd=workdir)
    assert scanned.returncode == 0, scanned.stderr
    (source,) = json.loads(scanned.stdout)["sources"]
    assert source["samples"] >= 5 and source["error"] is None
    assert len(queue_rows(workdir)) == source["samples"]


def test_scan_goes_on_past_a_corrupt_file(workdir, clip):
    corrupt = workdir / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x01garbage" * 5000)
    scanned = run_monitor("scan", str(corrupt), str(clip), "--every", "4s", "-c", "monitor.yaml", "--json", cwd=workdir)
    assert scanned.returncode == 0, scanned.stderr
    bad, good = json.loads(scanned.stdout)["sources"]
    assert bad["samples"] == 0 and "corrupt.mp4" in bad["error"] and "\n" not in bad["error"]
    assert good["samples"] == 5 and good["error"] is None


@pytest.mark.parametrize(
    "make_input, code, words",
    [
        (lambda d: d / "absent.mp4", 2, ["absent.mp4", "no such file"]),
        (lambda d: (d / "empty").mkdir() or d / "empty", 1, ["holds no images"]),
        (lambda d: (d / "junk.mp4").write_bytes(b"junk" * 100) and d / "junk.mp4", 1, ["junk.mp4"]),
    ],
    ids=["missing path", "empty folder", "corrupt file only"],
)
def test_scan_bad_input_exit_codes(workdir, make_input, code, words):
    target = make_input(workdir)
    scanned = run_monitor("scan", str(target), "-c", "monitor.yaml", "--json", cwd=workdir)
    assert scanned.returncode == code, (scanned.stdout, scanned.stderr)
    assert "Traceback" not in scanned.stderr
    text = scanned.stdout + scanned.stderr
    for word in words:
        assert word in text


def test_queue_list_filters_by_status(workdir, clip):
    assert run_monitor("scan", str(clip), "--every", "10s", "-c", "monitor.yaml", cwd=workdir).returncode == 0
    assert len(queue_rows(workdir)) == 2
    listed = run_monitor("queue", "list", "-c", "monitor.yaml", "--status", "approved", "--json", cwd=workdir)
    assert listed.returncode == 0 and listed.stdout == ""
