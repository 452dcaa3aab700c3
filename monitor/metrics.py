"""Every Prometheus metric the monitor exports, built against a registry passed in.

Labels are few and bounded: site, camera, label, stage, reason, outcome, kind, window.
Never a URL, a frame id or free text. Source health (up, reconnects, failed frames, age
of the last frame) is read from each source's status at scrape time by a collector, so
it is never stale; so are the review queue's and the drift detector's numbers, which
come from the database through callables passed in (:meth:`Metrics.watch_reviews`,
:meth:`Metrics.watch_drift`), cached by their providers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
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
        self.decode_seconds = Histogram(
            "monitor_decode_seconds",
            "Time a camera's poll took to deliver its stills: decoding (video files) and conversion "
            "to RGB at the snapshot size", camera, buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.positives = Counter(
            "monitor_positives_total", "Predictions of an alert label at or above the camera's threshold",
            [*camera, "label"], registry=registry,
        )
        self.alert_episodes = Counter(
            "monitor_alert_episodes_total",
            "Positives that start an alert episode (none of the camera's positives shortly before)",
            camera, registry=registry,
        )
        self.alerts = Counter(
            "monitor_alerts_total", "Alerts raised, by the site's rollout stage when raised",
            [*camera, "label", "stage"], registry=registry,
        )
        self.out_of_domain = Counter(
            "monitor_out_of_domain_frames_total", "Classified stills with an out-of-domain signal, per signal",
            [*camera, "reason"], registry=registry,
        )

    def init_camera(self, site_id: str, camera_id: str, *, ood_reasons: Sequence[str] = ()) -> None:
        """Create a camera's counters at zero, so `rate()` and `== 0` alerts see a camera
        that never delivered a frame, and its out-of-domain reasons before the first one.

        Args:
            site_id: the camera's site.
            camera_id: the camera.
            ood_reasons: the out-of-domain signals in use.
        """
        for counter in (self.frames_sampled, self.samples_dropped, self.alert_episodes):
            counter.labels(site_id, camera_id)
        for reason in ood_reasons:
            self.out_of_domain.labels(site_id, camera_id, reason)

    def watch_reviews(self, read: Callable[[], "ReviewNumbers"]) -> None:
        """Export the review queue's numbers, read (cached by ``read``) at scrape time.

        Args:
            read: returns the current :class:`ReviewNumbers`.
        """
        self.registry.register(_ReviewCollector(read))

    def watch_drift(self, read: Callable[[], "DriftNumbers"]) -> None:
        """Export the drift detector's flags and statistics, read at scrape time.

        Args:
            read: returns the current :class:`DriftNumbers`.
        """
        self.registry.register(_DriftCollector(read))

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


@dataclass
class ReviewNumbers:
    """The review queue as /metrics shows it; every key is a site id.

    Attributes:
        pending: items waiting for a person.
        oldest_pending_seconds: age of the oldest pending item (sites with none pending omitted).
        decisions: (site, outcome) -> decisions ever made (approve, reject, relabel, undo);
            a prune of reviewed items lowers it, which Prometheus reads as a counter reset.
        precision: approved / decided positives in the review window (sites with none omitted).
        decided_positives: decided positives in the review window.
    """

    pending: dict[str, int] = field(default_factory=dict)
    oldest_pending_seconds: dict[str, float] = field(default_factory=dict)
    decisions: dict[tuple[str, str], int] = field(default_factory=dict)
    precision: dict[str, float] = field(default_factory=dict)
    decided_positives: dict[str, int] = field(default_factory=dict)


class _ReviewCollector(Collector):
    def __init__(self, read: Callable[[], ReviewNumbers]):
        self._read = read

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        numbers = self._read()
        pending = GaugeMetricFamily("monitor_review_items_pending", "Review items waiting for a person",
                                    labels=["site"])
        oldest = GaugeMetricFamily("monitor_review_oldest_pending_age_seconds",
                                   "Age of the oldest review item still pending", labels=["site"])
        decisions = CounterMetricFamily("monitor_review_decisions", "Review decisions by outcome",
                                        labels=["site", "outcome"])
        precision = GaugeMetricFamily(
            "monitor_reviewed_precision", "Approved share of reviewed positives in the review window",
            labels=["site"])
        decided = GaugeMetricFamily("monitor_reviewed_positives", "Reviewed positives in the review window",
                                    labels=["site"])
        for site, value in numbers.pending.items():
            pending.add_metric([site], float(value))
        for site, value in numbers.oldest_pending_seconds.items():
            oldest.add_metric([site], value)
        for (site, outcome), value in numbers.decisions.items():
            decisions.add_metric([site, outcome], float(value))
        for site, value in numbers.precision.items():
            precision.add_metric([site], value)
        for site, value in numbers.decided_positives.items():
            decided.add_metric([site], float(value))
        return [pending, oldest, decisions, precision, decided]


@dataclass
class DriftNumbers:
    """The drift detector's state as /metrics shows it; keys are (site, camera), camera ""
    for a site's cameras pooled.

    Attributes:
        flags: (site, camera, kind) -> 1.0 open, 0.0 not; every kind of every scope evaluated.
        rate_ratio: (site, camera, window) -> alert-episode rate over the baseline rate.
        baseline_rate: (site, camera) -> alert episodes per classified still in the baseline.
        confidence_psi: (site, camera) -> PSI of the confidence distribution (longest window).
        class_mix_distance: (site, camera) -> total variation distance of the class mix.
        ood_ratio: (site, camera) -> out-of-domain share over the baseline's.
        last_run: seconds since the epoch of the last finished evaluation; None before it.
        runs: (outcome) -> evaluations finished ("ok") or failed ("error").
        leader: whether this process runs the detector (with many workers, only the
            holder of the drift job's lease does); None when unknown.
    """

    flags: dict[tuple[str, str, str], float] = field(default_factory=dict)
    rate_ratio: dict[tuple[str, str, str], float] = field(default_factory=dict)
    baseline_rate: dict[tuple[str, str], float] = field(default_factory=dict)
    confidence_psi: dict[tuple[str, str], float] = field(default_factory=dict)
    class_mix_distance: dict[tuple[str, str], float] = field(default_factory=dict)
    ood_ratio: dict[tuple[str, str], float] = field(default_factory=dict)
    last_run: float | None = None
    runs: dict[str, int] = field(default_factory=dict)
    leader: bool | None = None


class _DriftCollector(Collector):
    def __init__(self, read: Callable[[], DriftNumbers]):
        self._read = read

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        numbers = self._read()
        scope = ["site", "camera"]
        flag = GaugeMetricFamily("monitor_drift_flag", "1 while a drift flag of this kind is open",
                                 labels=[*scope, "kind"])
        ratio = GaugeMetricFamily("monitor_drift_rate_ratio",
                                  "Alert-episode rate in the window over the baseline rate", labels=[*scope, "window"])
        baseline = GaugeMetricFamily("monitor_drift_baseline_alert_rate",
                                     "Alert episodes per classified still in the baseline", labels=scope)
        psi = GaugeMetricFamily("monitor_drift_confidence_psi",
                                "Population stability index of the confidence distribution against the baseline",
                                labels=scope)
        mix = GaugeMetricFamily("monitor_drift_class_mix_distance",
                                "Total variation distance of the predicted class mix from the baseline's", labels=scope)
        ood = GaugeMetricFamily("monitor_drift_ood_ratio",
                                "Out-of-domain share of stills over the baseline's share", labels=scope)
        last = GaugeMetricFamily("monitor_drift_last_run_timestamp_seconds",
                                 "When the drift detector last finished an evaluation")
        runs = CounterMetricFamily("monitor_drift_evaluations", "Drift evaluations by outcome", labels=["outcome"])
        leader = GaugeMetricFamily("monitor_drift_leader",
                                   "1 in the process that runs the drift detector (one worker at a time)")
        for key, value in numbers.flags.items():
            flag.add_metric(list(key), value)
        for key, value in numbers.rate_ratio.items():
            ratio.add_metric(list(key), value)
        for family, values in ((baseline, numbers.baseline_rate), (psi, numbers.confidence_psi),
                               (mix, numbers.class_mix_distance), (ood, numbers.ood_ratio)):
            for key, value in values.items():
                family.add_metric(list(key), value)
        if numbers.last_run is not None:
            last.add_metric([], numbers.last_run)
        for outcome, value in numbers.runs.items():
            runs.add_metric([outcome], float(value))
        if numbers.leader is not None:
            leader.add_metric([], 1.0 if numbers.leader else 0.0)
        return [flag, ratio, baseline, psi, mix, ood, last, runs, leader]


def with_constant_labels(registry: CollectorRegistry, labels: Mapping[str, str]) -> CollectorRegistry:
    """A registry serving every metric of ``registry`` with ``labels`` added to each sample.

    `monitor run --worker NAME` serves its metrics through this with ``{"worker": NAME}``,
    so the workers' series stay apart; rules and dashboards sum them with
    ``sum without (worker, instance) (...)``.

    Args:
        registry: the registry the metrics were created against.
        labels: label name -> value, added to (or overriding) every sample's labels.
    """
    served = CollectorRegistry(auto_describe=False)
    served.register(_ConstantLabels(registry, dict(labels)))
    return served


class _ConstantLabels(Collector):
    def __init__(self, registry: CollectorRegistry, labels: dict[str, str]):
        self._registry = registry
        self._labels = labels

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        for family in self._registry.collect():
            labelled = Metric(family.name, family.documentation, family.type, family.unit)
            labelled.samples = [s._replace(labels={**s.labels, **self._labels}) for s in family.samples]
            yield labelled
