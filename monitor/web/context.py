"""What every request handler of the web app needs, passed in once when the app is built.

Responsible for holding the engine, snapshot store, metrics registry, classifier, live
camera statuses and settings in one object (``app.state.ctx``), so that handlers never
reach for module-level globals and tests build an app per database.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from fastapi import Request
from prometheus_client import CollectorRegistry
from sqlalchemy.engine import Engine
from sqlmodel import Session

from monitor.config import MonitorConfig
from monitor.model.base import Classifier
from monitor.store import SnapshotStore, session_scope
from monitor.store.tables import utcnow
from monitor.types import NONE_LABEL, SourceStatus

# Labels offered for relabelling when no model is loaded: the alert labels, then the
# two labels that never alert.
EXTRA_LABELS = ("teddy", NONE_LABEL)


@dataclass
class WebContext:
    """Everything the web app works with.

    Attributes:
        engine: the store's database.
        snapshots: the snapshot JPEGs.
        registry: the metrics registry served on /metrics.
        config: the validated config (web settings, alert labels).
        classifier: the model for the classify page; None disables that page.
        sources: camera id -> (site id, live status) while `monitor run` samples them;
            None when the app runs alone (`monitor serve`).
        labels: the labels a reviewer may relabel to, in shortcut order (1-9).
        clock: the current time (UTC); injectable for tests.
    """

    engine: Engine
    snapshots: SnapshotStore
    registry: CollectorRegistry
    config: MonitorConfig
    classifier: Classifier | None = None
    sources: Mapping[str, tuple[str, SourceStatus]] | None = None
    labels: tuple[str, ...] = ()
    clock: Callable[[], datetime] = field(default=utcnow)

    def __post_init__(self) -> None:
        if not self.labels:
            if self.classifier is not None:
                self.labels = tuple(self.classifier.labels)
            else:
                self.labels = tuple(dict.fromkeys([*self.config.alert_labels, *EXTRA_LABELS]))

    @property
    def session_lifetime(self) -> timedelta:
        return timedelta(seconds=self.config.web.session_lifetime)

    @property
    def secure_cookies(self) -> bool:
        return self.config.web.secure_cookies

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A database session that commits at the end of the block."""
        with session_scope(self.engine) as session:
            yield session


def get_ctx(request: Request) -> WebContext:
    """The app's context (a FastAPI dependency)."""
    return request.app.state.ctx
