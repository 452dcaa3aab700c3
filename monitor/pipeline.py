"""Batch, classify, route and store the stills the sampler took.

One inference worker takes batches from the bounded sample queue (across cameras, up to
B stills or W seconds), classifies each batch in one call, asks the routing policy what
to do with every prediction, and hands the outcomes to the store. The policy is an
object passed in: the pipeline never knows about rollout stages.

A batch the store cannot take (a full disk, a database that went away) is kept and
retried before the next one, up to a bound, so a short outage loses nothing.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from monitor.metrics import Metrics
from monitor.model.base import Classifier
from monitor.ood import OodDetector
from monitor.sample_queue import SampleQueue
from monitor.types import Frame, Outcome, Prediction

log = logging.getLogger(__name__)
MAX_PENDING_BATCHES = 64


@dataclass(frozen=True, slots=True)
class CameraRouting:
    """What the pipeline needs to know about a camera to route its predictions."""

    site_id: str
    threshold: float


def is_positive(prediction: Prediction, alert_labels: frozenset[str], threshold: float) -> bool:
    """A positive is an alert label predicted with confidence at or above the threshold."""
    return prediction.label in alert_labels and prediction.confidence >= threshold


class Pipeline:
    """Classifies stills in batches and routes and stores every result.

    Args:
        classifier: labels images in batches.
        policy: decides review / alert per prediction (see rollout.policy.RoutingPolicy).
        persist: stores a list of outcomes; raises on failure.
        cameras: camera id -> its site and threshold.
        alert_labels: labels that count as positive.
        metrics: where counts go.
        on_outcomes: called with every stored batch (progress bars, summaries); optional.
        ood: measures each frame's out-of-domain signals; None marks nothing out of domain.
        stage_of: site id -> its rollout stage name, for the ``stage`` label of alerts.
        episode_gap: seconds; a camera's positive less than this after its previous
            positive continues that alert episode instead of starting one.
    """

    def __init__(
        self,
        *,
        classifier: Classifier,
        policy,
        persist: Callable[[list[Outcome]], None],
        cameras: Mapping[str, CameraRouting],
        alert_labels: Sequence[str],
        metrics: Metrics,
        on_outcomes: Callable[[list[Outcome]], None] | None = None,
        ood: OodDetector | None = None,
        stage_of: Callable[[str], str] | None = None,
        episode_gap: float = 60.0,
    ) -> None:
        self._classifier = classifier
        self._ood = ood
        self._stage_of = stage_of or (lambda _site: "unknown")
        self._episode_gap = episode_gap
        self._last_positive: dict[str, float] = {}
        self._policy = policy
        self._persist = persist
        self._cameras = dict(cameras)
        self._alert_labels = frozenset(alert_labels)
        self._metrics = metrics
        self._on_outcomes = on_outcomes
        self._pending: collections.deque[list[Outcome]] = collections.deque()
        self.outcomes_lost = 0

    def process(self, frames: Sequence[Frame]) -> list[Outcome]:
        """Classify, route and store one batch; returns its outcomes.

        Store failures are logged and the batch is kept for a retry with the next one.
        """
        if not frames:
            self._retry_pending()
            return []
        started = time.perf_counter()
        predictions = self._classifier.predict_batch([f.image for f in frames])
        self._metrics.inference_seconds.observe(time.perf_counter() - started)
        self._metrics.batch_size.observe(len(frames))
        outcomes = [self._route(frame, prediction) for frame, prediction in zip(frames, predictions)]
        self._pending.append(outcomes)
        self._retry_pending()
        if self._on_outcomes is not None:
            self._on_outcomes(outcomes)
        return outcomes

    def _route(self, frame: Frame, prediction: Prediction) -> Outcome:
        camera = self._cameras[frame.camera_id]
        positive = is_positive(prediction, self._alert_labels, camera.threshold)
        ood_reasons = tuple(r.value for r in self._ood.check(frame, prediction)) if self._ood is not None else ()
        route = self._policy.route(
            site_id=camera.site_id, camera_id=frame.camera_id, prediction=prediction, positive=positive,
            out_of_domain=bool(ood_reasons),
        )
        labels = (camera.site_id, frame.camera_id)
        self._metrics.predictions.labels(*labels, prediction.label).inc()
        for reason in ood_reasons:
            self._metrics.out_of_domain.labels(*labels, reason).inc()
        episode = positive and self._starts_episode(frame)
        if positive:
            self._metrics.positives.labels(*labels, prediction.label).inc()
        if episode:
            self._metrics.alert_episodes.labels(*labels).inc()
        if route.alert:
            self._metrics.alerts.labels(*labels, prediction.label, self._stage_of(camera.site_id)).inc()
        if route.review_reason is not None:
            self._metrics.review_queued.labels(*labels, route.review_reason.value).inc()
        return Outcome(site_id=camera.site_id, frame=frame, prediction=prediction, route=route,
                       ood_reasons=ood_reasons, alert_episode=episode)

    def _starts_episode(self, frame: Frame) -> bool:
        # Chained: every positive extends the episode, so a bear standing in view for ten
        # minutes is one episode, as it would be one event to the people alerted.
        moment = frame.captured_at.timestamp()
        previous = self._last_positive.get(frame.camera_id)
        self._last_positive[frame.camera_id] = moment if previous is None else max(previous, moment)
        return previous is None or abs(moment - previous) > self._episode_gap

    def _retry_pending(self) -> None:
        while self._pending:
            batch = self._pending[0]
            try:
                self._persist(batch)
            except Exception as exc:
                self._metrics.store_failures.labels(batch[0].site_id).inc()
                log.error("could not store %d results, will retry: %s", len(batch), exc)
                log.debug("store failure", exc_info=True)
                if len(self._pending) > MAX_PENDING_BATCHES:
                    lost = self._pending.popleft()
                    self.outcomes_lost += len(lost)
                    log.error("retry buffer full: dropped %d results that could not be stored", len(lost))
                return
            self._pending.popleft()

    @property
    def pending_outcomes(self) -> int:
        """Outcomes classified but not yet stored."""
        return sum(len(batch) for batch in self._pending)


class InferenceWorker:
    """The one thread that drains the sample queue into the pipeline in batches.

    Args:
        queue: the bounded sample queue.
        pipeline: processes each batch.
        batch_size: largest batch (B).
        batch_wait: seconds to wait to fill a batch after its first still (W).
    """

    def __init__(self, queue: SampleQueue[Frame], pipeline: Pipeline, *, batch_size: int, batch_wait: float):
        self._queue = queue
        self._pipeline = pipeline
        self._batch_size = batch_size
        self._batch_wait = batch_wait
        self._thread = threading.Thread(target=self._run, name="inference", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while True:
            batch = self._queue.take_batch(self._batch_size, self._batch_wait, idle_timeout=1.0)
            if not batch:
                if self._queue.closed and len(self._queue) == 0:
                    self._pipeline.process([])  # last retry of anything unstored
                    return
                self._pipeline.process([])
                continue
            try:
                self._pipeline.process(batch)
            except Exception as exc:  # a model failure must not kill the worker
                self.error = exc
                log.error("inference failed for %d stills: %s", len(batch), exc)
                log.debug("inference failure", exc_info=True)

    def stop(self, timeout: float = 30.0) -> None:
        """Close the queue, finish what was sampled, and wait for the thread."""
        self._queue.close()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()
