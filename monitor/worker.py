"""A `monitor run --worker NAME` process's share of the cameras: sample what its leases say.

Responsible for binding :class:`monitor.leases.LeaseManager` to the sampler: when the
worker takes a camera's lease, the camera's source is created and sampled; when it
loses or hands over the lease, sampling stops and the source is closed. The recorder is
fenced with the leases, so stills of a camera the worker no longer holds are dropped.
:class:`LiveStatuses` is the thread-safe camera -> status view that metrics and the
Cameras page read while leases change it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping

from monitor.config import CameraConfig, MonitorConfig, SiteConfig
from monitor.leases import LeaseManager
from monitor.sampler import Sampler
from monitor.sources import create_source
from monitor.store.recording import Recorder
from monitor.types import SourceStatus

log = logging.getLogger(__name__)


class LiveStatuses(Mapping[str, tuple[str, SourceStatus]]):
    """camera id -> (site id, source status), changed by one thread and read by others."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, tuple[str, SourceStatus]] = {}

    def set(self, camera_id: str, value: tuple[str, SourceStatus]) -> None:
        with self._lock:
            self._items[camera_id] = value

    def discard(self, camera_id: str) -> None:
        with self._lock:
            self._items.pop(camera_id, None)

    def __getitem__(self, camera_id: str) -> tuple[str, SourceStatus]:
        with self._lock:
            return self._items[camera_id]

    def __iter__(self) -> Iterator[str]:
        with self._lock:
            return iter(list(self._items))

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def items(self):  # type: ignore[override]  (a snapshot: safe while leases change)
        with self._lock:
            return list(self._items.items())


class LeasedCameras:
    """Samples exactly the cameras this worker holds a lease on.

    Args:
        config: the validated config (every worker must use the same cameras).
        engine: the shared database.
        sampler: a sampler built without sources; cameras are added and removed here.
        statuses: where each sampled camera's status is published.
        recorder: the pipeline's recorder; it is fenced with the leases.
        worker: this worker's unique name.
    """

    def __init__(self, config: MonitorConfig, engine, sampler: Sampler, statuses: LiveStatuses,
                 recorder: Recorder, *, worker: str) -> None:
        self._config = config
        self._sampler = sampler
        self._statuses = statuses
        self._cameras: dict[str, tuple[SiteConfig, CameraConfig]] = {
            camera.id: (site, camera) for site, camera in config.cameras() if camera.enabled
        }
        self._closing = threading.Event()
        self.leases = LeaseManager(
            engine, worker=worker, cameras=list(self._cameras),
            ttl=config.workers.lease_ttl, heartbeat=config.workers.heartbeat,
            on_acquired=self._start_camera, on_released=self._stop_camera,
        )
        recorder.fence = self.leases.held

    def start(self) -> None:
        """Register with the other workers and take a first share of the cameras.

        Raises:
            StoreError: the database cannot be used.
        """
        self.leases.start()

    def freeze(self) -> None:
        """Start no more cameras (sampling is about to stop)."""
        self._closing.set()

    def stop(self) -> None:
        """Stop taking cameras and hand every lease back (call after the pipeline is flushed)."""
        self._closing.set()
        self.leases.stop(release=True)

    def _start_camera(self, camera_id: str) -> None:
        if self._closing.is_set():
            return
        site, camera = self._cameras[camera_id]
        try:
            source = create_source(camera, max_width=self._config.pipeline.snapshot_max_width)
            self._statuses.set(camera_id, (site.id, source.status))
            self._sampler.add_camera(camera_id, source, camera.every)
        except Exception as exc:  # one camera that cannot start must not stop the others
            log.error("camera %s could not be started: %s", camera_id, exc)
            log.debug("camera start failure", exc_info=True)

    def _stop_camera(self, camera_id: str) -> None:
        self._sampler.remove_camera(camera_id)
        self._statuses.discard(camera_id)
