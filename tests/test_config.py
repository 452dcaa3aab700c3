"""Config validation: every bad config gives one line naming the field and the fix, exit 2."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from monitor.config import ConfigError, load_config, parse_duration
from running_monitor import run_monitor

GOOD = {
    "database": "sqlite:///data/monitor.db",
    "snapshots": "data/snapshots",
    "model": "builtin:imagenet-bears",
    "sites": [
        {
            "id": "north-camp",
            "cameras": [
                {"id": "gate", "url": "rtsp://admin:hunter2@cam.local:554/live", "every": "5s"},
                {"id": "trail", "path": "{clip}", "every": 2, "threshold": 0.7},
            ],
        }
    ],
}


def write(tmp_path: Path, data, clip: Path) -> Path:
    text = yaml.safe_dump(data) if not isinstance(data, str) else data
    path = tmp_path / "monitor.yaml"
    path.write_text(text.replace("{clip}", str(clip)))
    return path


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"not inspected by config validation")
    return path


def with_camera(**changes):
    camera = {"id": "gate", "url": "rtsp://cam.local/live", "every": "5s"}
    camera.update(changes)
    camera = {k: v for k, v in camera.items() if v is not None}
    return {"sites": [{"id": "s1", "cameras": [camera]}]}


def test_good_config_loads(tmp_path, clip):
    config = load_config(write(tmp_path, GOOD, clip))
    gate, trail = config.sites[0].cameras
    assert gate.every == 5.0 and trail.every == 2.0
    assert config.threshold_for(trail) == 0.7 and config.threshold_for(gate) == 0.5


@pytest.mark.parametrize(
    "text, every",
    [("5", 5.0), ("5s", 5.0), ("2m", 120.0), ("1h", 3600.0), ("500ms", 0.5), ("1.5s", 1.5), (3, 3.0)],
)
def test_durations(text, every):
    assert parse_duration(text) == every


BAD_CONFIGS = [
    # (id, config data, words the one-line error must contain)
    ("unknown top-level key", {"databse": "sqlite:///x.db"}, ["databse", "unknown key", "spelling"]),
    ("unknown camera key", with_camera(fps=5), ["sites[0].cameras[0].fps", "unknown key"]),
    ("bad duration unit", with_camera(every="5x"), ["sites[0].cameras[0].every", "not a duration", "5s"]),
    ("negative duration", with_camera(every=-1), ["sites[0].cameras[0].every", "greater than zero"]),
    ("zero duration", with_camera(every="0s"), ["every", "greater than zero"]),
    ("boolean duration", with_camera(every=True), ["every", "true/false"]),
    ("duplicate camera ids",
     {"sites": [{"id": "a", "cameras": [{"id": "gate", "url": "rtsp://h/x"}]},
                {"id": "b", "cameras": [{"id": "gate", "url": "rtsp://h/y"}]}]},
     ["camera id 'gate' appears twice", "unique"]),
    ("duplicate site ids", {"sites": [{"id": "a"}, {"id": "a"}]}, ["site id 'a' appears twice"]),
    ("unreadable path", with_camera(url=None, path="/nonexistent/clip.mp4"),
     ["sites[0].cameras[0]", "/nonexistent/clip.mp4", "does not exist"]),
    ("url and path both", with_camera(path="{clip}"), ["exactly one of `url`", "`path`"]),
    ("neither url nor path", with_camera(url=None), ["exactly one of `url`"]),
    ("url without stream scheme", with_camera(url="ftp://user:pw@cam/live"), ["no stream scheme", "rtsp://"]),
    ("threshold above 1", with_camera(threshold=1.5), ["sites[0].cameras[0].threshold", "less than or equal to 1"]),
    ("camera id with spaces", with_camera(id="front gate"), ["sites[0].cameras[0].id", "no spaces"]),
    ("missing camera id", {"sites": [{"id": "a", "cameras": [{"url": "rtsp://h/x"}]}]},
     ["sites[0].cameras[0].id", "missing"]),
    ("unsupported database", {"database": "mysql://root@localhost/db"}, ["database", "not supported", "sqlite:///"]),
    ("none as alert label", {"alert_labels": ["grizzly", "none"]}, ["alert_labels", "'none'"]),
    ("sites not a list", {"sites": {"id": "a"}}, ["sites", "list"]),
    ("batch size zero", {"pipeline": {"batch_size": 0}}, ["pipeline.batch_size", "greater than or equal to 1"]),
    ("bad transport", with_camera(transport="quic"), ["sites[0].cameras[0].transport", "'tcp' or 'udp'"]),
    ("top level not a mapping", "- just\n- a list\n", ["top level must be a mapping"]),
    ("broken YAML", "sites: [\n  {id: a,\n", ["not valid YAML", "line"]),
]


@pytest.mark.parametrize("name, data, words", BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_is_one_clear_line(tmp_path, clip, name, data, words):
    path = write(tmp_path, data, clip)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


def test_unreadable_path_permissions(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads every file; permission checks cannot fail here")
    locked = tmp_path / "locked.mp4"
    locked.write_bytes(b"x")
    locked.chmod(0)
    with pytest.raises(ConfigError, match="not readable"):
        load_config(write(tmp_path, with_camera(url=None, path=str(locked)), locked))


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "absent.yaml")


def test_credentials_never_in_config_errors(tmp_path, clip):
    data = with_camera(url="ftp://admin:hunter2@cam/live")
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, data, clip))
    assert "hunter2" not in str(caught.value)


def test_check_config_command_exit_codes(tmp_path, clip):
    good = run_monitor("check-config", str(write(tmp_path, GOOD, clip)), cwd=tmp_path)
    assert good.returncode == 0, good.stderr
    assert "ok (1 site(s), 2 camera(s)" in good.stdout
    bad_path = tmp_path / "bad.yaml"
    bad_path.write_text(yaml.safe_dump(with_camera(every="5x")))
    bad = run_monitor("check-config", str(bad_path), cwd=tmp_path)
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "every" in lines[0]
    assert "Traceback" not in bad.stderr
