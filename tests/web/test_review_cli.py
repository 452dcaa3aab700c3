"""`monitor user`, `monitor token`, `monitor serve` and the UI under `monitor run`, as a user runs them."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest
import yaml

from running_monitor import REVIEW_UI_LINE, RunningMonitor, run_monitor

PASSWORD = "correct-horse-battery"


@pytest.fixture
def workdir(tmp_path: Path, database_url: str) -> Path:
    config = {"database": database_url, "snapshots": str(tmp_path / "data" / "snapshots")}
    (tmp_path / "monitor.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


def test_user_add_token_create_and_serve(workdir):
    add_alice = ("user", "add", "alice", "-c", "monitor.yaml", "--password-stdin")
    added = run_monitor(*add_alice, cwd=workdir, stdin=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    assert PASSWORD not in added.stdout + added.stderr
    again = run_monitor(*add_alice, cwd=workdir, stdin=PASSWORD + "\n")
    assert again.returncode == 2 and "already exists" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    short = run_monitor("user", "add", "bob", "-c", "monitor.yaml", "--password-stdin", cwd=workdir, stdin="short\n")
    assert short.returncode == 2 and "8 to" in short.stderr
    odd = run_monitor("user", "add", "bob smith", "-c", "monitor.yaml", "--password-stdin", cwd=workdir, stdin=PASSWORD)
    assert odd.returncode == 2 and "not allowed" in odd.stderr
    listed = run_monitor("user", "list", "-c", "monitor.yaml", cwd=workdir)
    assert listed.stdout.split()[:2] == ["alice", "active"]
    created = run_monitor("token", "create", "--user", "alice", "--name", "script", "-c", "monitor.yaml", cwd=workdir)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("mon_")
    assert run_monitor("token", "create", "--user", "nobody", "-c", "monitor.yaml", cwd=workdir).returncode == 2

    server = RunningMonitor(["serve", "-c", "monitor.yaml", "--port", "0", "--no-model"], workdir,
                            line=REVIEW_UI_LINE, log="serve.log")
    try:
        assert httpx.get(f"{server.base}/healthz").text == "ok"
        assert httpx.get(f"{server.base}/metrics").status_code == 200
        assert httpx.get(f"{server.base}/api/v1/items").status_code == 401
        items = httpx.get(f"{server.base}/api/v1/items", headers={"Authorization": f"Bearer {token}"})
        assert items.status_code == 200 and items.json()["items"] == []
        login = httpx.get(f"{server.base}/login")
        assert login.status_code == 200 and "Sign in" in login.text
        assert server.stop() == 0
    finally:
        server.kill()
    assert token not in server.log.read_text() and PASSWORD not in server.log.read_text()


def test_serve_on_a_port_in_use_is_one_line_and_exit_1(workdir):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = run_monitor("serve", "-c", "monitor.yaml", "--port", str(port), "--no-model", cwd=workdir)
    assert done.returncode == 1 and done.stderr.startswith("error: cannot listen on 127.0.0.1:")
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_monitor_run_serves_the_review_ui_next_to_metrics(tmp_path, model_cache):
    data = tmp_path / "monitor-data"
    data.mkdir()
    (data / "models").symlink_to(model_cache, target_is_directory=True)
    run = RunningMonitor(["run", "--metrics-port", "0"], tmp_path)
    try:
        assert "monitor_frames_sampled_total" in httpx.get(f"{run.base}/metrics").text
        assert httpx.get(f"{run.base}/login").status_code == 200
        assert httpx.post(f"{run.base}/api/v1/items/1/decision", json={"action": "approve"}).status_code == 401
        assert run.stop() == 0
    finally:
        run.kill()
