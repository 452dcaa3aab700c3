"""The `rollout` command: output, exit codes (0 ok, 1 runtime, 2 usage) and one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from rollout.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def config_file(tmp_path, monitor_config, database_url) -> Path:
    data = monitor_config.model_dump(mode="json", exclude_none=True)
    data["database"] = database_url
    path = tmp_path / "monitor.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def rollout(config_file):
    """rollout(*args) -> click Result, with -c pointing at the test config."""
    runner = CliRunner()

    def invoke(*args: str, config: bool = True):
        command, *rest = args
        extra = ["-c", str(config_file)] if config else []
        return runner.invoke(main, [command, *rest, *extra], catch_exceptions=False)

    return invoke


def one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_status_lists_every_site_with_its_gates(rollout):
    result = rollout("status")
    assert result.exit_code == 0, result.output
    for text in ("north", "south", "stage manual", "precision", "alert_rate", "INSUFFICIENT DATA", "need 200"):
        assert text in result.stdout
    data = json.loads(rollout("status", "north", "--json").stdout)
    assert [s["site_id"] for s in data] == ["north"]
    assert [g["name"] for g in data[0]["gates"]["gates"]] == [
        "reviewed", "days", "precision", "misses", "alert_rate", "drift"]


def test_unknown_site_exits_2(rollout):
    result = rollout("status", "west")
    assert result.exit_code == 2
    assert "site 'west' is not in the config" in one_error_line(result)


def test_promote_is_refused_with_the_gates_then_forced(rollout):
    refused = rollout("promote", "north")
    assert refused.exit_code == 1
    assert "stays at manual" in one_error_line(refused) and "--force" in refused.stderr
    assert "precision" in refused.stdout  # the table of gates, with their numbers

    no_reason = rollout("promote", "north", "--force")
    assert no_reason.exit_code == 2 and "--reason" in one_error_line(no_reason)

    forced = rollout("promote", "north", "--force", "--reason", "pilot in July", "--by", "ranger")
    assert forced.exit_code == 0, forced.output
    assert forced.stdout.strip() == "north: manual -> limited (forced: gates did not pass)"
    assert forced.stderr == ""
    assert "stage limited" in rollout("status", "north").stdout


def test_rollback_needs_a_reason_and_a_stage_below(rollout):
    assert rollout("rollback", "north").exit_code == 2  # click: missing option
    at_manual = rollout("rollback", "north", "--reason", "x")
    assert at_manual.exit_code == 1 and "already at manual" in one_error_line(at_manual)
    rollout("promote", "north", "--force", "--reason", "pilot")
    back = rollout("rollback", "north", "--reason", "false alarms at night", "--by", "ranger")
    assert back.exit_code == 0 and back.stdout.strip() == "north: limited -> manual"


def test_history_shows_who_when_what_and_why(rollout):
    rollout("promote", "north", "--force", "--reason", "pilot", "--by", "ranger")
    rollout("rollback", "north", "--reason", "too many night alerts", "--by", "chief")
    table = rollout("history", "north")
    assert table.exit_code == 0
    for text in ("ranger", "chief", "promote (forced)", "manual -> limited", "limited -> manual",
                 "too many night alerts", "gates INSUFFICIENT DATA"):
        assert text in table.stdout
    events = json.loads(rollout("history", "north", "--json").stdout)
    assert [(e["actor"], e["action"]) for e in events] == [("chief", "rollback"), ("ranger", "promote")]
    assert events[1]["evidence"]["gates"][0]["name"] == "reviewed"
    assert "no rollout events" in rollout("history", "south").stdout


def test_window_add_and_remove(rollout):
    added = rollout("window", "north", "--cron", "0 */4 * * *", "--until", "2099-12-31", "--duration", "90m")
    assert added.exit_code == 0, added.output
    assert "window 1 added: '0 */4 * * *' (UTC) for 1.5h until 2100-01-01 00:00 UTC" in added.stdout
    assert "window 1: cron '0 */4 * * *'" in rollout("status", "north").stdout
    assert rollout("window", "north", "--remove", "1").exit_code == 0
    again = rollout("window", "north", "--remove", "1")
    assert again.exit_code == 2 and "no window 1" in one_error_line(again)


@pytest.mark.parametrize(
    "args,message",
    [
        (("--cron", "0 */4 * *", "--until", "2099-01-01"), "five fields"),
        (("--cron", "0 */4 * * *", "--until", "soon"), "YYYY-MM-DD"),
        (("--cron", "0 */4 * * *", "--until", "2001-01-01"), "already past"),
        (("--cron", "0 */4 * * *", "--until", "2099-01-01", "--timezone", "Mars/Base"), "time zone"),
        (("--cron", "0 */4 * * *"), "--until"),
        (("--remove", "1", "--cron", "0 * * * *"), "not both"),
    ],
)
def test_bad_windows_exit_2_in_one_line(rollout, args, message):
    result = rollout("window", "north", *args)
    assert result.exit_code == 2
    assert message in one_error_line(result)


def test_bad_duration_is_a_usage_error(rollout):
    result = rollout("window", "north", "--cron", "0 * * * *", "--until", "2099-01-01", "--duration", "forever")
    assert result.exit_code == 2 and "not a duration" in result.stderr


def test_evaluate_prints_one_line_per_site(rollout):
    result = rollout("evaluate")
    assert result.exit_code == 0
    assert result.stdout.splitlines() == ["north: manual, gates INSUFFICIENT DATA", "south: manual, gates INSUFFICIENT DATA"]


def test_bad_config_exits_2(tmp_path, rollout):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sites: [{id: north, cameras: [], colour: red}]\n")
    result = CliRunner().invoke(main, ["status", "-c", str(bad)])
    assert result.exit_code == 2 and "unknown key 'colour'" in one_error_line(result)
    missing = CliRunner().invoke(main, ["status", "-c", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "no such config file" in one_error_line(missing)


def test_unreachable_database_exits_1_without_the_password(tmp_path):
    config = tmp_path / "pg.yaml"
    config.write_text("database: postgresql+psycopg://ranger:hunter2@127.0.0.1:1/monitor\n")
    result = CliRunner().invoke(main, ["status", "-c", str(config)])
    assert result.exit_code == 1
    line = one_error_line(result)
    assert "cannot connect" in line and "hunter2" not in line


def test_console_script_runs(config_file, tmp_path):
    script = shutil.which("rollout", path=str(Path(sys.executable).parent))
    command = [script] if script else [sys.executable, "-m", "rollout.cli"]
    done = subprocess.run(
        [*command, "promote", "south", "--force", "--reason", "trial", "-c", str(config_file)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "south: manual -> limited (forced: gates did not pass)"
    refused = subprocess.run(
        [*command, "promote", "west", "-c", str(config_file)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
