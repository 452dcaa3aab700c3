"""The one YAML config file: strict pydantic models and a loader with one-line errors.

Every field has a default and a description; unknown keys are errors. Cross-field checks
live in named ``verify_*`` functions called from one model validator, so each rule is
easy to find. :func:`load_config` turns any problem into a :class:`ConfigError` whose
message names the field path and the fix, ready to print on one line.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from monitor.redact import redact_text
from rollout.config import RolloutConfig
from monitor.notify_config import NotifyConfig, WorkersConfig
from monitor.observe_config import DriftConfig, OodConfig
from monitor.types import DEFAULT_ALERT_LABELS, NONE_LABEL

DEFAULT_DATA_DIR = Path("monitor-data")
LIVE_SCHEMES = ("rtsp", "rtsps", "http", "https", "rtmp", "srt", "udp")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class ConfigError(Exception):
    """A config that cannot be used; the message is one line that names the fix."""


def parse_duration(value: Any) -> float:
    """Parse seconds given as a number or a string like "500ms", "5s", "2m", "1h", "1d".

    Raises:
        ValueError: with the accepted forms, for anything else.
    """
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 5, '5s', '2m' or '1h', not true/false")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(
                f"{value!r} is not a duration; write seconds (5) or a number with a unit "
                "(500ms, 5s, 2m, 1h, 1d)"
            )
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"duration must be greater than zero, got {value!r}")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
Identifier = Annotated[
    str,
    Field(pattern=_ID, description="letters, digits, '_', '-', '.'; at most 64 characters"),
]


class Strict(BaseModel):
    """Base of every config section: unknown keys are errors, values are validated on set."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class CameraConfig(Strict):
    """One camera, video file or folder of stills."""

    id: Identifier = Field(description="unique camera id across all sites")
    name: str | None = Field(None, description="display name; defaults to the id")
    url: str | None = Field(
        None, description="rtsp://, rtsps://, http(s):// (MJPEG, HLS) stream URL; may hold credentials"
    )
    path: str | None = Field(None, description="a video file or a folder of still images")
    every: Duration = Field(5.0, description="take a still every this many seconds ('5s', '2m')")
    enabled: bool = Field(True, description="disabled cameras are configured but never sampled")
    threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="confidence at or above which a bear label is positive"
    )
    transport: Literal["tcp", "udp"] = Field("tcp", description="RTSP transport")
    open_timeout: Duration = Field(10.0, description="give up opening a stream after this long")
    read_timeout: Duration = Field(10.0, description="treat a stream as dead after this long silent")
    replay: bool = Field(
        True, description="for a video file under `monitor run`: pace it at real time like a camera"
    )
    loop: bool = Field(False, description="for a replayed video file: start again at the end")

    @property
    def display_name(self) -> str:
        return self.name or self.id

    @property
    def location(self) -> str:
        """The url or path, whichever is set (may hold credentials: never print it)."""
        return self.url if self.url is not None else str(self.path)

    @property
    def is_live(self) -> bool:
        return self.url is not None

    @model_validator(mode="after")
    def _verify(self) -> "CameraConfig":
        verify_url_or_path(self)
        return self


class SiteConfig(Strict):
    """A place with cameras (a campsite, a trailhead); rollout stages are per site."""

    id: Identifier = Field(description="unique site id")
    name: str | None = Field(None, description="display name; defaults to the id")
    cameras: list[CameraConfig] = Field(default_factory=list, description="cameras at this site")
    notify: list[str] = Field(
        default_factory=list, description="names of notify.targets that get this site's alerts"
    )


class PipelineConfig(Strict):
    """Batching and back-pressure between the sampler and the classifier."""

    batch_size: int = Field(16, ge=1, le=256, description="classify up to this many stills at once")
    batch_wait: Duration = Field(0.05, description="wait at most this long to fill a batch")
    queue_size: int = Field(
        256, ge=1, description="samples waiting for the classifier; the oldest are dropped beyond it"
    )
    snapshot_max_width: int = Field(
        1280, ge=64, description="snapshots (and the frames classified) are scaled down to this width"
    )
    tile_scale: int = Field(
        1, ge=0, le=4,
        description="0: classify the centred square only; 1: overlapping squares that cover the "
        "whole frame (as many as the aspect ratio needs); 2-4: a finer grid for small, distant animals",
    )


class MetricsConfig(Strict):
    """Where `monitor run` serves Prometheus metrics (/metrics) and the review web UI."""

    enabled: bool = Field(True, description="serve /metrics and the review UI")
    host: str = Field("127.0.0.1", description="listen address")
    port: int = Field(9108, ge=0, le=65535, description="listen port (0 picks a free one)")


class WebConfig(Strict):
    """The review web UI (served with /metrics by `monitor run`, alone by `monitor serve`)."""

    secure_cookies: bool = Field(
        False, description="mark the session cookie Secure; turn on when the UI is served over HTTPS"
    )
    session_lifetime: Duration = Field(
        12 * 3600.0, description="a reviewer stays signed in this long ('12h', '7d')"
    )
    max_upload_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, description="largest image the classify page accepts"
    )


class MonitorConfig(Strict):
    """The whole config file."""

    database: str = Field(
        f"sqlite:///{DEFAULT_DATA_DIR}/monitor.db",
        description="SQLAlchemy URL: sqlite:///path.db or postgresql+psycopg://user@host/db",
    )
    snapshots: Path = Field(DEFAULT_DATA_DIR / "snapshots", description="folder for snapshot JPEGs")
    model: str = Field(
        "builtin:imagenet-bears", description="builtin:imagenet-bears or a path to a model bundle"
    )
    model_cache: Path = Field(
        DEFAULT_DATA_DIR / "models", description="where built-in models are built and cached"
    )
    alert_labels: list[str] = Field(
        list(DEFAULT_ALERT_LABELS), min_length=1, description="labels that count as a positive"
    )
    threshold: float = Field(0.5, ge=0.0, le=1.0, description="default positive threshold")
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    web: WebConfig = Field(default_factory=WebConfig)
    sites: list[SiteConfig] = Field(default_factory=list, description="sites and their cameras")
    rollout: RolloutConfig = Field(
        default_factory=RolloutConfig, description="stages: routing per stage, promotion gates, rollback"
    )
    notify: NotifyConfig = Field(default_factory=NotifyConfig, description="where alerts go: webhooks, MQTT")
    workers: WorkersConfig = Field(
        default_factory=WorkersConfig, description="camera leases of `monitor run --worker NAME` processes"
    )
    ood: OodConfig = Field(default_factory=OodConfig, description="out-of-domain signals per frame and their thresholds")
    drift: DriftConfig = Field(
        default_factory=DriftConfig, description="drift detection against each site's baseline: windows, tests, levels"
    )

    @model_validator(mode="after")
    def _verify(self) -> "MonitorConfig":
        verify_unique_ids(self)
        verify_alert_labels(self)
        verify_database_url(self)
        verify_notify_targets(self)
        return self

    def cameras(self) -> list[tuple[SiteConfig, CameraConfig]]:
        """Every (site, camera) pair, in config order."""
        return [(site, cam) for site in self.sites for cam in site.cameras]

    def threshold_for(self, camera: CameraConfig) -> float:
        return camera.threshold if camera.threshold is not None else self.threshold


def verify_url_or_path(camera: CameraConfig) -> None:
    """A camera has exactly one of url/path; a url has a live scheme; a path is readable."""
    if (camera.url is None) == (camera.path is None):
        raise ValueError("give exactly one of `url` (a stream) or `path` (a file or folder)")
    if camera.url is not None:
        scheme = camera.url.split("://", 1)[0].lower() if "://" in camera.url else ""
        if scheme not in LIVE_SCHEMES:
            raise ValueError(
                f"url {redact_text(camera.url)!r} has no stream scheme; use one of "
                f"{', '.join(s + '://' for s in LIVE_SCHEMES)} or `path:` for a file"
            )
    else:
        path = Path(str(camera.path)).expanduser()
        if not path.exists():
            raise ValueError(f"path {str(path)!r} does not exist; fix the path or remove the camera")
        if not os.access(path, os.R_OK) or (path.is_dir() and not os.access(path, os.X_OK)):
            raise ValueError(f"path {str(path)!r} is not readable; check its permissions")


def verify_unique_ids(config: MonitorConfig) -> None:
    """Site ids are unique, and camera ids are unique across all sites."""
    seen_sites: set[str] = set()
    seen_cameras: dict[str, str] = {}
    for site in config.sites:
        if site.id in seen_sites:
            raise ValueError(f"site id {site.id!r} appears twice; give each site its own id")
        seen_sites.add(site.id)
        for camera in site.cameras:
            if camera.id in seen_cameras:
                raise ValueError(
                    f"camera id {camera.id!r} appears twice (sites {seen_cameras[camera.id]!r} and "
                    f"{site.id!r}); camera ids must be unique across all sites"
                )
            seen_cameras[camera.id] = site.id


def verify_alert_labels(config: MonitorConfig) -> None:
    """`none` can never alert, and labels are not repeated."""
    if NONE_LABEL in config.alert_labels:
        raise ValueError(f"alert_labels must not contain {NONE_LABEL!r}: nothing to alert on")
    if len(set(config.alert_labels)) != len(config.alert_labels):
        raise ValueError("alert_labels lists a label twice; list each once")


def verify_database_url(config: MonitorConfig) -> None:
    """Only SQLite and PostgreSQL URLs are supported."""
    if not config.database.startswith(("sqlite://", "postgresql://", "postgresql+psycopg://")):
        raise ValueError(
            f"database {redact_text(config.database)!r} is not supported; use "
            "sqlite:///path/monitor.db or postgresql+psycopg://user@host:5432/db"
        )


def verify_notify_targets(config: MonitorConfig) -> None:
    """Every target a site names in `notify` is defined under notify.targets."""
    for site in config.sites:
        for name in site.notify:
            if name not in config.notify.targets:
                known = ", ".join(sorted(config.notify.targets)) or "none defined"
                raise ValueError(
                    f"site {site.id!r} notifies {name!r}, which is not under notify.targets ({known}); "
                    "define it there or remove it"
                )


def _format_location(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part:
            path += ("." if path else "") + str(part)
    return path or "(top level)"


def _format_error(error: dict[str, Any], raw: Any) -> str:
    loc = tuple(p for p in error["loc"] if not str(p).startswith("function-"))
    where = _format_location(loc)
    kind = error["type"]
    if kind == "extra_forbidden":
        parent = _format_location(loc[:-1])
        return f"{where}: unknown key {loc[-1]!r} in {parent}; remove it or check its spelling"
    if kind == "missing":
        return f"{where}: required field is missing; add it"
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind == "string_pattern_mismatch":
        message = "use letters, digits, '_', '-' or '.' (at most 64 characters, no spaces)"
    return f"{where}: {redact_text(message)}"


def parse_config(data: Any, *, source: str = "config") -> MonitorConfig:
    """Validate already-parsed YAML data.

    Raises:
        ConfigError: naming the first invalid field and how to fix it.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys (database:, sites:, ...)")
    try:
        return MonitorConfig.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        first = _format_error(errors[0], data)
        more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
        raise ConfigError(f"{source}: {first}{more}") from None


def load_config(path: str | os.PathLike[str]) -> MonitorConfig:
    """Read and validate a YAML config file; relative paths in it are relative to the cwd.

    Raises:
        ConfigError: unreadable file, bad YAML, or an invalid field, in one line.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file; check the path given to -c") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.__class__.__name__}: {exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}; fix the syntax") from None
    return parse_config(data, source=str(path))


def default_config(data_dir: Path = DEFAULT_DATA_DIR) -> MonitorConfig:
    """The config used without -c: SQLite and snapshots under ``data_dir``, no cameras.

    `monitor run` adds its generated demo camera to this when no config is given.
    """
    return MonitorConfig(
        database=f"sqlite:///{data_dir}/monitor.db",
        snapshots=data_dir / "snapshots",
        model_cache=data_dir / "models",
    )
