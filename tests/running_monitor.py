"""The `monitor` command as the tests run it: to completion, or in the background.

``run_monitor(*args, cwd=...)`` runs one command and returns its exit code and output;
``RunningMonitor`` starts a long-running one (`monitor run`, `monitor serve`), keeps its
output in a log file and reads the port it prints from that log.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path

METRICS_LINE = r"metrics on http://127\.0\.0\.1:(\d+)/metrics"
REVIEW_UI_LINE = r"review UI on http://127\.0\.0\.1:(\d+)/"


def run_monitor(*args: str, cwd: Path | None = None, stdin: str | None = None,
                env: Mapping[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`monitor ARGS...` as a user runs it, in a fresh process (this interpreter's), to
    completion; output captured as text; ``env`` adds to this process's environment."""
    return subprocess.run([sys.executable, "-m", "monitor.cli", *args], cwd=cwd, input=stdin,
                          env={**os.environ, **env} if env else None, capture_output=True, text=True,
                          timeout=timeout)


def http_get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


class RunningMonitor:
    """A `monitor` subprocess; its output goes to ``cwd/log`` and the port it serves on is
    read from the first line matching ``line`` (the metrics line of `monitor run` by default)."""

    def __init__(self, args: list[str], cwd: Path, *, line: str = METRICS_LINE, log: str = "run.log",
                 timeout: float = 180) -> None:
        self.log = cwd / log
        self._log_file = self.log.open("w")
        self.process = subprocess.Popen([sys.executable, "-m", "monitor.cli", *args], cwd=cwd,
                                        stdout=self._log_file, stderr=subprocess.STDOUT)
        try:
            self.port = self._wait_for_port(line, timeout)
        except BaseException:
            self.kill()
            raise
        self.base = f"http://127.0.0.1:{self.port}"

    def _wait_for_port(self, line: str, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(line, self.log.read_text())
            if found:
                return int(found.group(1))
            if self.process.poll() is not None:
                raise AssertionError(f"monitor exited early:\n{self.log.read_text()}")
            time.sleep(0.2)
        raise AssertionError(f"monitor did not start in {timeout:.0f} s:\n{self.log.read_text()}")

    def scrape(self) -> str:
        """The text of its /metrics."""
        return http_get(f"{self.base}/metrics").decode()

    def wait_for(self, condition: Callable[[str], bool], timeout: float) -> bool:
        """Whether ``condition(scrape())`` came true within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition(self.scrape()):
                return True
            time.sleep(0.25)
        return False

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            self._log_file.close()

    def kill(self) -> None:
        """Make sure it is gone (after a failure; harmless after :meth:`stop`)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log_file.close()
