"""Composition root: build the store, model, sources and pipeline from a config, run, stop.

Nothing else in the project wires components together. :class:`Core` holds what both
jobs share (database, snapshots, classifier, metrics, pipeline); :class:`LiveMonitor`
adds the sampler and the web server (review UI, JSON API and /metrics) for `monitor run`,
and :func:`scan_sources` drives finite sources as fast as possible for `monitor scan`.
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from prometheus_client import CollectorRegistry
from sqlalchemy.engine import Engine

from monitor.config import CameraConfig, ConfigError, MonitorConfig, SiteConfig
from monitor.metrics import Metrics, with_constant_labels
from monitor.model import load_model
from monitor.model.base import Classifier
from monitor.model.tiling import TiledClassifier
from monitor.pipeline import CameraRouting, InferenceWorker, Pipeline
from monitor.sample_queue import SampleQueue
from monitor.sampler import Sampler
from monitor.sources import create_source
from monitor.sources.base import Source, SourceError
from monitor.store import (
    SnapshotStore,
    add_frame_counts,
    create_engine_for,
    init_schema,
    record_predictions,
    session_scope,
    sync_sites_and_cameras,
)
from monitor.store.db import StoreError
from monitor.store.recording import Recorder
from monitor.notify import build_dispatcher, targets_by_site
from monitor.worker import LeasedCameras, LiveStatuses
from monitor.types import Frame, Outcome, SourceStatus
from monitor.drift import Cached, DriftDetector
from monitor.job_lease import DRIFT_JOB, ROLLOUT_JOB, JobLease
from monitor.metrics import ReviewNumbers
from monitor.ood import OodDetector
from monitor.store.observe import drift_flag_provider, review_numbers
from monitor.web import WebServer, create_web_app
from rollout.policy import PolicyRefresher, StagePolicy
from rollout.promote import EvaluationJob, RolloutContext
from rollout.stages import Stage
from rollout.store import init_rollout_schema, stage_periods

log = logging.getLogger(__name__)


@dataclass
class Core:
    """What every job needs: storage, the model, metrics and a pipeline.

    Attributes:
        sites: camera id -> site id, for every configured camera.
    """

    config: MonitorConfig
    engine: Engine
    snapshots: SnapshotStore
    classifier: Classifier
    metrics: Metrics
    pipeline: Pipeline
    sites: dict[str, str]
    policy_refresher: PolicyRefresher
    recorder: Recorder | None = None  # `monitor run`: once per still, fenced by leases, with alerts

    def count_dropped(self, frame: Frame) -> None:
        """Count a still the sample queue dropped, in metrics and the hourly counts."""
        self.metrics.samples_dropped.labels(self.sites[frame.camera_id], frame.camera_id).inc()
        self._count_frames(frame.camera_id, frame.captured_at, dropped=1)

    def count_failed(self, camera_id: str, count: int) -> None:
        """Count stills a source failed to deliver in the hourly counts."""
        self._count_frames(camera_id, datetime.now(timezone.utc), failed=count)

    def _count_frames(self, camera_id: str, when: datetime, **counts: int) -> None:
        try:
            with session_scope(self.engine) as session:
                add_frame_counts(camera_id, when, session=session, **counts)
        except Exception as exc:  # counting must never stop sampling
            log.warning("could not update the hourly counts of %s: %s", camera_id, exc)

    def close(self) -> None:
        self.policy_refresher.stop()
        self.engine.dispose()


def build_core(
    config: MonitorConfig,
    *,
    registry: CollectorRegistry | None = None,
    classifier: Classifier | None = None,
    on_outcomes: Callable[[list[Outcome]], None] | None = None,
    rng: random.Random | None = None,
    live: bool = False,
    worker: str | None = None,
) -> Core:
    """Open the database and snapshot folder, load the model and build the pipeline.

    Args:
        config: a validated config.
        registry: metrics registry; a fresh one by default.
        classifier: an already-loaded model; loaded from ``config.model`` by default.
        on_outcomes: called with each stored batch.
        rng: random source for review sampling.
        live: store through a :class:`Recorder` (`monitor run`): each still once,
            alerts and their notifications in the same transaction.
        worker: this worker's name (`monitor run --worker`), kept on what it records.

    Raises:
        StoreError: the database or snapshot folder cannot be used.
        ModelError: the model cannot be loaded.
    """
    engine = create_engine_for(config.database)
    init_schema(engine)  # creates a new database; refuses an old one (`monitor db upgrade`)
    snapshots = SnapshotStore(Path(config.snapshots))
    snapshots.sweep_temp()
    _sync_config(engine, config)
    if classifier is None:
        classifier = load_model(config.model, cache_dir=Path(config.model_cache), alert_labels=config.alert_labels)
    if config.pipeline.tile_scale > 0:
        classifier = TiledClassifier(classifier, config.alert_labels, scale=config.pipeline.tile_scale)
    metrics = Metrics(registry if registry is not None else CollectorRegistry())
    routing = {
        camera.id: CameraRouting(site_id=site.id, threshold=config.threshold_for(camera))
        for site, camera in config.cameras()
    }

    def persist(outcomes: list[Outcome]) -> None:
        with session_scope(engine) as session:
            record_predictions(outcomes, session=session, snapshots=snapshots)

    recorder = Recorder(engine, snapshots, targets_by_site=targets_by_site(config), worker=worker) if live else None

    # The routing policy reads each site's rollout stage from a snapshot that a background
    # thread refreshes, so `rollout promote` reaches this process within seconds.
    init_rollout_schema(engine)
    policy = StagePolicy.from_config(config.rollout, rng=rng)
    refresher = PolicyRefresher(policy, engine, interval=config.rollout.refresh_interval)
    refresher.start()
    pipeline = Pipeline(
        classifier=classifier,
        policy=policy,
        persist=recorder or persist,
        cameras=routing,
        alert_labels=config.alert_labels,
        metrics=metrics,
        on_outcomes=on_outcomes,
        ood=OodDetector(config.ood),
        stage_of=lambda site_id: policy.stage_of(site_id).value,
        episode_gap=config.drift.episode_gap,
    )
    ood_reasons = config.ood.signals if config.ood.enabled else []
    for site, camera in config.cameras():
        if camera.enabled:
            metrics.init_camera(site.id, camera.id, ood_reasons=ood_reasons)
    sites = {camera_id: r.site_id for camera_id, r in routing.items()}
    metrics.watch_stages(lambda: {site.id: policy.stage_of(site.id).value for site in config.sites})
    return Core(config, engine, snapshots, classifier, metrics, pipeline, sites, refresher, recorder)


def _sync_config(engine: Engine, config: MonitorConfig, attempts: int = 3) -> None:
    # Workers starting together race to insert the same site and camera rows; the loser
    # of a race simply syncs again and finds the rows there.
    for attempt in range(1, attempts + 1):
        try:
            with session_scope(engine) as session:
                sync_sites_and_cameras(config, session=session)
            return
        except StoreError:
            if attempt == attempts:
                raise
            time.sleep(0.2 * attempt)


def _manual_periods(session, site_id: str) -> list[tuple[datetime | None, datetime | None]]:
    """The drift baseline: the site's manual-stage periods, from the rollout's audit log."""
    return [(p.start, p.end) for p in stage_periods(site_id, session=session) if p.stage is Stage.MANUAL]


class LiveMonitor:
    """`monitor run`: sample every enabled camera on its interval until stopped.

    Args:
        core: built by :func:`build_core`.
        serve_metrics: start the web server (review UI, API, /metrics) on the config's
            ``metrics.host`` and ``metrics.port``.
        worker_name: `monitor run --worker NAME`: sample only the cameras whose lease this
            worker holds (see :mod:`monitor.worker`), label every metric ``worker=NAME``;
            needs a core built with ``live=True``.

    Raises:
        ConfigError: a notify target's secret is missing from the environment.
    """

    def __init__(self, core: Core, *, serve_metrics: bool = True, worker_name: str | None = None) -> None:
        self.core = core
        config = core.config
        self.worker_name = worker_name
        self.sources: dict[str, Source] = {}
        statuses: dict[str, tuple[str, SourceStatus]] | LiveStatuses = LiveStatuses() if worker_name else {}
        intervals = {}
        for site, camera in config.cameras():
            if not camera.enabled or worker_name is not None:  # a worker starts cameras as it leases them
                continue
            source = create_source(camera, max_width=config.pipeline.snapshot_max_width)
            self.sources[camera.id] = source
            statuses[camera.id] = (site.id, source.status)
            intervals[camera.id] = camera.every
        core.metrics.watch_sources(statuses)
        self.statuses = statuses
        self.queue: SampleQueue[Frame] = SampleQueue(config.pipeline.queue_size, on_drop=core.count_dropped)
        enabled = sum(1 for _, camera in config.cameras() if camera.enabled)
        self.sampler = Sampler(self.sources, intervals, self.queue, on_sampled=self._sampled,
                               on_failed=core.count_failed, max_cameras=enabled, on_polled=self._polled)
        self.leased: LeasedCameras | None = None
        if worker_name is not None:
            if core.recorder is None:
                raise ValueError("a worker needs a core built with live=True")
            self.leased = LeasedCameras(config, core.engine, self.sampler, statuses, core.recorder,
                                        worker=worker_name)
        try:
            self.dispatcher = build_dispatcher(
                core.engine, config.notify, registry=core.metrics.registry,
                client_id=f"bear-monitor-{worker_name or socket.gethostname()}",
                cameras=(lambda: list(self.leased.leases.held())) if self.leased is not None else None,
            )
        except ValueError as exc:
            raise ConfigError(f"notify.targets: {exc}") from None
        if core.recorder is not None:
            core.recorder.on_alerts = self.dispatcher.wake
        self.worker = InferenceWorker(
            self.queue, core.pipeline,
            batch_size=config.pipeline.batch_size, batch_wait=config.pipeline.batch_wait,
        )
        self._serve_metrics = serve_metrics and config.metrics.enabled
        self.metrics_port: int | None = None
        self._web_server: WebServer | None = None
        self._stopped = threading.Event()
        # Gates are evaluated periodically so automatic rollback (when enabled) can act;
        # with workers, only by the holder of the rollout job's lease.
        self.evaluation_lease: JobLease | None = None
        if worker_name is not None:
            self.evaluation_lease = JobLease(
                core.engine, job=ROLLOUT_JOB, worker=worker_name,
                ttl=config.workers.lease_ttl, heartbeat=config.workers.heartbeat,
            )
        self.evaluation = EvaluationJob(
            core.engine, RolloutContext.from_config(config, drift_flags=drift_flag_provider(core.engine)),
            site_ids=[site.id for site in config.sites], leader=self.evaluation_lease,
        )
        self.drift: DriftDetector | None = None
        # With workers, one of them (the drift job's lease holder) runs the detector.
        self.drift_lease: JobLease | None = None
        if config.drift.enabled:
            cameras: dict[str, list[str]] = {site.id: [] for site in config.sites}
            for site, camera in config.cameras():
                cameras[site.id].append(camera.id)
            if worker_name is not None:
                self.drift_lease = JobLease(
                    core.engine, job=DRIFT_JOB, worker=worker_name,
                    ttl=config.workers.lease_ttl, heartbeat=config.workers.heartbeat,
                    on_acquired=lambda: self.drift.run_soon(), on_lost=lambda: self.drift.forget(),
                )
            self.drift = DriftDetector(core.engine, config.drift, cameras, baseline_periods=_manual_periods,
                                       leader=self.drift_lease)
            core.metrics.watch_drift(self.drift.numbers)
        engine, window = core.engine, config.drift.review_window

        def read_reviews() -> ReviewNumbers:
            with session_scope(engine) as session:
                return review_numbers(session=session, now=datetime.now(timezone.utc), window=timedelta(seconds=window))

        core.metrics.watch_reviews(Cached(read_reviews, config.drift.metrics_cache, ReviewNumbers()))

    def _polled(self, camera_id: str, seconds: float) -> None:
        self.core.metrics.decode_seconds.labels(self.core.sites[camera_id], camera_id).observe(seconds)

    def _sampled(self, frame: Frame) -> None:
        self.core.metrics.frames_sampled.labels(self.core.sites[frame.camera_id], frame.camera_id).inc()
        self.core.metrics.queue_depth.set(len(self.queue))

    def start(self) -> None:
        """Start the web server (review UI, API, /metrics), the inference worker and the sampler.

        Raises:
            WebServerError: the configured address cannot be used.
        """
        if self._serve_metrics:
            metrics = self.core.config.metrics
            core = self.core
            registry = core.metrics.registry
            if self.worker_name is not None:  # each worker's series stay apart in Prometheus
                registry = with_constant_labels(registry, {"worker": self.worker_name})
            app = create_web_app(
                engine=core.engine, snapshots=core.snapshots, registry=registry,
                config=core.config, classifier=core.classifier, sources=self.statuses,
            )
            self._web_server = WebServer(app, host=metrics.host, port=metrics.port)
            self.metrics_port = self._web_server.start()
            log.info("metrics on http://%s:%d/metrics", metrics.host, self.metrics_port)
            log.info("review UI on http://%s:%d/", metrics.host, self.metrics_port)
        self.worker.start()
        self.sampler.start()
        if self.evaluation_lease is not None:
            self.evaluation_lease.start()
        self.evaluation.start()
        if self.drift is not None:
            self.drift.start()
        if self.drift_lease is not None:
            self.drift_lease.start()
        self.dispatcher.start()
        if self.leased is not None:
            self.leased.start()
            log.info("worker %s: sampling %d camera(s) of its share",
                     self.worker_name, len(self.leased.leases.sampling()))
        else:
            log.info("sampling %d camera(s)", len(self.sources))

    def stop(self) -> None:
        """Stop sampling, classify and store what was already sampled, release everything."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self.leased is not None:
            self.leased.freeze()  # no camera may start while sampling stops
        self.sampler.stop()
        self.worker.stop()
        self.dispatcher.stop()
        if self.leased is not None:
            self.leased.stop()  # after the pipeline stored what was sampled: hand the cameras over
        self.evaluation.stop()
        if self.evaluation_lease is not None:
            self.evaluation_lease.stop(release=True)
        if self.drift is not None:
            self.drift.stop()
        if self.drift_lease is not None:
            self.drift_lease.stop(release=True)  # after the detector stopped: another worker takes over
        if self._web_server is not None:
            self._web_server.stop()
        self.core.close()


@dataclass
class ScanResult:
    """What scanning one source produced."""

    camera_id: str
    origin: str
    samples: int = 0
    media_seconds: float = 0.0
    error: str | None = None


def scan_sources(
    core: Core,
    cameras: Iterable[tuple[SiteConfig, CameraConfig]],
    *,
    on_sample: Callable[[Frame], None] | None = None,
) -> list[ScanResult]:
    """Read every sample of finite sources as fast as possible and run them through the pipeline.

    Decoding happens on this thread and inference on the worker's, so the two overlap.
    A source that fails is reported in its result; the others go on.

    Returns:
        One result per camera, in order.
    """
    config = core.config
    queue: SampleQueue[Frame] = SampleQueue(config.pipeline.queue_size)
    worker = InferenceWorker(queue, core.pipeline,
                             batch_size=config.pipeline.batch_size, batch_wait=config.pipeline.batch_wait)
    worker.start()
    results = []
    try:
        for site, camera in cameras:
            result = ScanResult(camera_id=camera.id, origin=str(camera.path))
            results.append(result)
            try:
                source = create_source(camera, scan=True, max_width=config.pipeline.snapshot_max_width)
                with source:
                    for frame in source.scan():
                        queue.put(frame)
                        core.metrics.frames_sampled.labels(site.id, camera.id).inc()
                        result.samples += 1
                        if frame.media_ts is not None:
                            result.media_seconds = max(result.media_seconds, frame.media_ts)
                        if on_sample is not None:
                            on_sample(frame)
                    if source.status.last_error:
                        result.error = source.status.last_error
            except SourceError as exc:
                result.error = str(exc)
                log.error("%s", exc)
    finally:
        worker.stop(timeout=600)
    return results
