"""Take a still from every camera every `every` seconds and hand it to the pipeline.

One APScheduler interval job per enabled camera. Jobs are coalesced (a late job runs
once, not once per missed interval) and never overlap (max_instances=1). A job only
calls the source's non-blocking ``poll()``: the network waits happen in each live
source's own reader thread, so one dead camera never delays another.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler

from monitor.redact import redact_text
from monitor.sample_queue import QueueClosed, SampleQueue
from monitor.sources.base import Source
from monitor.types import Frame

log = logging.getLogger(__name__)
MAX_JOB_THREADS = 16


class Sampler:
    """Schedules one polling job per camera and offers the stills to a bounded queue.

    Args:
        sources: camera id -> started-or-not source.
        intervals: camera id -> seconds between stills.
        queue: where stills go; full queues drop their oldest sample.
        on_sampled: called with each frame offered (for metrics); optional.
        on_failed: called with (camera id, count) when a source reports new failed
            stills (for the hourly counts); optional.
        max_cameras: how many cameras may be added later with :meth:`add_camera`
            (sizes the job thread pool); default: the sources given.
        on_polled: called with (camera id, seconds) after each poll that returned
            stills: the time to decode and convert them (for metrics); optional.
    """

    def __init__(
        self,
        sources: Mapping[str, Source],
        intervals: Mapping[str, float],
        queue: SampleQueue[Frame],
        on_sampled: Callable[[Frame], None] | None = None,
        on_failed: Callable[[str, int], None] | None = None,
        max_cameras: int | None = None,
        on_polled: Callable[[str, float], None] | None = None,
    ) -> None:
        self._on_polled = on_polled
        missing = set(sources) - set(intervals)
        if missing:
            raise ValueError(f"no interval for cameras {sorted(missing)}")
        self._sources = dict(sources)
        self._intervals = dict(intervals)
        self._queue = queue
        self._on_sampled = on_sampled
        self._on_failed = on_failed
        self._failed_seen = {camera_id: 0 for camera_id in self._sources}
        workers = max(1, min(MAX_JOB_THREADS, max_cameras or len(self._sources)))
        self._scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(workers)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone="UTC",
        )

    def start(self) -> None:
        """Start every source and one interval job per camera."""
        for camera_id, source in self._sources.items():
            source.start()
            self._scheduler.add_job(
                self.sample_once,
                "interval",
                args=[camera_id],
                seconds=self._intervals[camera_id],
                id=f"sample:{camera_id}",
                name=f"sample {camera_id}",
            )
        self._scheduler.start()

    def add_camera(self, camera_id: str, source: Source, every: float) -> None:
        """Start sampling one more camera (a worker took its lease); the sampler must be running."""
        self._sources[camera_id] = source
        self._intervals[camera_id] = every
        self._failed_seen[camera_id] = source.status.frames_failed
        source.start()
        self._scheduler.add_job(
            self.sample_once, "interval", args=[camera_id], seconds=every,
            id=f"sample:{camera_id}", name=f"sample {camera_id}", replace_existing=True,
        )

    def remove_camera(self, camera_id: str) -> None:
        """Stop sampling a camera and close its source (a worker lost or handed over its lease)."""
        try:
            self._scheduler.remove_job(f"sample:{camera_id}")
        except JobLookupError:
            pass
        source = self._sources.pop(camera_id, None)
        if source is not None:
            try:
                source.close()
            except Exception:
                log.debug("closing camera %s failed", camera_id, exc_info=True)

    def sample_once(self, camera_id: str) -> int:
        """Poll one camera and offer what it returned; returns the number of stills."""
        source = self._sources.get(camera_id)
        if source is None:  # removed while this job was already due
            return 0
        started = time.perf_counter()
        try:
            frames = source.poll()
            if frames and self._on_polled is not None:
                self._on_polled(camera_id, time.perf_counter() - started)
        except Exception as exc:  # a broken source must not kill its job
            source.status.last_error = redact_text(f"{exc.__class__.__name__}: {exc}")
            log.warning("camera %s: poll failed: %s", camera_id, source.status.last_error)
            log.debug("poll failure", exc_info=True)
            return 0
        finally:
            self._report_failures(camera_id, source)
        for frame in frames:
            try:
                self._queue.offer(frame)
            except QueueClosed:
                return 0
            if self._on_sampled is not None:
                self._on_sampled(frame)
        return len(frames)

    def _report_failures(self, camera_id: str, source: Source) -> None:
        failed = source.status.frames_failed
        new = failed - self._failed_seen[camera_id]
        if new > 0:
            self._failed_seen[camera_id] = failed
            if self._on_failed is not None:
                self._on_failed(camera_id, new)

    def stop(self) -> None:
        """Stop scheduling, wait for running jobs, then close every source."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=True)
        for source in list(self._sources.values()):
            try:
                source.close()
            except Exception:
                log.debug("closing camera %s failed", source.camera_id, exc_info=True)
