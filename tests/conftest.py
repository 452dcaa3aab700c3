"""Fixtures shared by every test package: the real-data folder, the built-in model, an RTSP
server, and the databases (SQLite or PostgreSQL: see tests/db_backends.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

REPO = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = "/usr/bin/python3"
RTSP_SERVER_SCRIPT = REPO / "tests" / "rtsp_server.py"


def shared_data_dir() -> Path:
    """The real photos and clips: $MONITOR_TEST_DATA, else ../shared/data beside the clone."""
    return Path(os.environ.get("MONITOR_TEST_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = shared_data_dir()
    if not (path / "bears").is_dir():
        pytest.skip(f"real test data not found at {path}; set MONITOR_TEST_DATA to the shared data folder")
    return path


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    """One cache for the built-in model per test session, so its ONNX graph is built once."""
    return Path(os.environ.get("MONITOR_TEST_MODEL_CACHE", tmp_path_factory.mktemp("model-cache")))


# -- RTSP server -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class RtspServer:
    """One tests/rtsp_server.py subprocess; can be stopped and started again on its port."""

    def __init__(self, *, port: int, path: str, file: Path | None = None, gop: int = 25) -> None:
        self.port = port
        self.path = path
        self.file = file
        self.gop = gop
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, userinfo: str = "") -> str:
        return f"rtsp://{userinfo + '@' if userinfo else ''}127.0.0.1:{self.port}/{self.path}"

    def start(self, timeout: float = 10.0) -> RtspServer:
        command = [SYSTEM_PYTHON, str(RTSP_SERVER_SCRIPT), "--port", str(self.port), "--path", self.path,
                   "--gop", str(self.gop)]
        if self.file is not None:
            command += ["--file", str(self.file)]
        deadline = time.monotonic() + timeout
        while True:
            self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    break
                if _port_open(self.port):
                    return self
                time.sleep(0.05)
            stderr = self.process.stderr.read().decode(errors="replace") if self.process.poll() is not None else ""
            self.stop()
            # Restarting on the same port can race the old socket's release: try again.
            if time.monotonic() >= deadline:
                raise RuntimeError(f"RTSP server did not start on port {self.port}: {stderr.strip()}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr:
            self.process.stderr.close()
        self.process = None


_gi_check: list[str | None] = []


def _rtsp_unavailable_reason() -> str | None:
    if not _gi_check:
        if not Path(SYSTEM_PYTHON).exists():
            _gi_check.append(f"{SYSTEM_PYTHON} not found")
        else:
            probe = subprocess.run(
                [SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GstRtspServer', '1.0'); "
                 "from gi.repository import GstRtspServer"],
                capture_output=True, text=True, timeout=30,
            )
            _gi_check.append(
                None if probe.returncode == 0 else
                "GStreamer RTSP server unavailable to /usr/bin/python3 (install python3-gi "
                "gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-good/ugly/bad): "
                + (probe.stderr.strip().splitlines() or ["?"])[-1]
            )
    return _gi_check[0]


@pytest.fixture(name="free_port")
def free_port_fixture() -> Callable[[], int]:
    """free_port() -> a TCP port on 127.0.0.1 that nothing listens on (now)."""
    return free_port


@pytest.fixture
def rtsp_server() -> Iterator[Callable[..., RtspServer]]:
    """start(path="cam", file=None, gop=25) -> a running RtspServer on a free port."""
    reason = _rtsp_unavailable_reason()
    if reason:
        pytest.skip(reason)
    servers: list[RtspServer] = []

    def start(path: str = "cam", file: Path | None = None, gop: int = 25) -> RtspServer:
        server = RtspServer(port=free_port(), path=path, file=file, gop=gop)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


# -- databases (see tests/db_backends.py) --------------------------------------------------------


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With MONITOR_TEST_DATABASE=postgresql (scripts/test's second pass) run only the tests
    that take their database from ``database_url``: the others either use none, or ran on
    both backends already (``backend_url``, ``postgres_url``), or are about SQLite itself."""
    from db_backends import runs_on_both_backends, selected_backend

    if selected_backend() != "postgresql":
        return
    keep = [item for item in items if "database_url" in item.fixturenames and not runs_on_both_backends(item)]
    if len(keep) < len(items):
        kept = set(keep)
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = keep


@pytest.fixture(scope="session")
def postgres_schemas():
    """Creates throwaway PostgreSQL schemas (``.create() -> URL``); all dropped at the end."""
    from db_backends import PostgresSchemas

    schemas = PostgresSchemas()
    yield schemas
    schemas.drop_all()


@pytest.fixture
def postgres_admin(postgres_schemas) -> Engine:
    """An engine on the test PostgreSQL's default schema (e.g. to terminate a session)."""
    return postgres_schemas.admin()


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL of an empty database on the backend under test: SQLite, or PostgreSQL with
    MONITOR_TEST_DATABASE=postgresql. The fixture for every test that needs a database."""
    from db_backends import new_database, selected_backend

    return new_database(request, selected_backend(), tmp_path)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    """Each backend in turn, in the same run (the PostgreSQL pass leaves these tests out)."""
    return request.param


@pytest.fixture
def backend_url(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> str:
    """A URL of an empty database on each backend in turn, for the tests that must show
    both in every run (the store, rollout and scale-out tests)."""
    from db_backends import new_database

    return new_database(request, backend, tmp_path)


@pytest.fixture
def postgres_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL of an empty PostgreSQL database, for what needs a server many processes share."""
    from db_backends import new_database

    return new_database(request, "postgresql", tmp_path)
