"""Every Prometheus metric the monitor exports, built against a registry passed in.

Labels are few and bounded: site, camera, label, reason. Never a URL, a frame id or
free text. Source health (up, reconnects, failed frames, age of the last frame) is read from each
source's status at scrape time by a collector, so it is never stale.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from datetime import timezone

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from monitor.types import SourceStatus

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """The monitor's metrics; create one per process (or per test) with its own registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        camera = ["site", "camera"]
        self.frames_sampled = Counter(
            "monitor_frames_sampled_total", "Stills taken from a camera", camera, registry=registry
        )
        self.samples_dropped = Counter(
            "monitor_samples_dropped_total",
            "Stills dropped unclassified because inference fell behind", camera, registry=registry,
        )
        self.predictions = Counter(
            "monitor_predictions_total", "Predictions by label", [*camera, "label"], registry=registry
        )
        self.review_queued = Counter(
            "monitor_review_items_queued_total", "Stills put in the review queue, by why",
            [*camera, "reason"], registry=registry,
        )
        self.store_failures = Counter(
            "monitor_store_failures_total", "Batches that could not be stored", ["site"],
            registry=registry,
        )
        self.inference_seconds = Histogram(
            "monitor_inference_seconds", "Time to classify one batch", buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "monitor_inference_batch_size", "Stills per inference batch", buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.queue_depth = Gauge(
            "monitor_sample_queue_depth", "Stills waiting for the classifier", registry=registry
        )

    def watch_sources(
        self, statuses: Mapping[str, tuple[str, SourceStatus]], clock: Callable[[], float] = time.time
    ) -> None:
        """Export each camera's health, read from its live status at scrape time.

        Args:
            statuses: camera id -> (site id, the source's status object).
            clock: seconds since the epoch; injectable for tests.
        """
        self.registry.register(_SourceCollector(statuses, clock))


    def watch_stages(self, stages: Callable[[], Mapping[str, str]]) -> None:
        """Export each site's rollout stage as ``monitor_site_stage{site, stage} 1``.

        Args:
            stages: returns site id -> stage name, read at scrape time.
        """
        self.registry.register(_StageCollector(stages))


class _StageCollector(Collector):
    STAGES = ("manual", "limited", "expansion", "full")

    def __init__(self, stages: Callable[[], Mapping[str, str]]):
        self._stages = stages

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily("monitor_site_stage", "1 for the rollout stage a site is in",
                                   labels=["site", "stage"])
        for site_id, current in self._stages().items():
            for stage in self.STAGES:
                family.add_metric([site_id, stage], 1.0 if stage == current else 0.0)
        return [family]


class _SourceCollector(Collector):
    def __init__(self, statuses: Mapping[str, tuple[str, SourceStatus]], clock: Callable[[], float]):
        self._statuses = statuses
        self._clock = clock

    def describe(self) -> Iterable[Metric]:
        return []  # values are only known at scrape time

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily("monitor_source_up", "1 when the camera delivers frames", labels=["site", "camera"])
        reconnects = CounterMetricFamily(
            "monitor_source_reconnects", "Reconnect attempts to a camera", labels=["site", "camera"]
        )
        failed = CounterMetricFamily(
            "monitor_frames_failed", "Stills that could not be read or decoded", labels=["site", "camera"]
        )
        age = GaugeMetricFamily(
            "monitor_last_frame_age_seconds", "Seconds since the camera's last frame",
            labels=["site", "camera"],
        )
        now = self._clock()
        for camera_id, (site_id, status) in self._statuses.items():
            labels = [site_id, camera_id]
            up.add_metric(labels, 1.0 if status.up else 0.0)
            reconnects.add_metric(labels, float(status.reconnects))
            failed.add_metric(labels, float(status.frames_failed))
            if status.last_frame_at is not None:
                last = status.last_frame_at.astimezone(timezone.utc).timestamp()
                age.add_metric(labels, max(0.0, now - last))
        return [up, reconnects, failed, age]
