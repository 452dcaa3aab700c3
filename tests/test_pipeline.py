"""Batching, routing and storing in the pipeline, with a scripted classifier.

The classifier here is a test double on purpose: these tests pin down routing rules
(thresholds, teddy never alerting, negative sampling, retries), which must not depend
on what a real model happens to think of an image. The real model runs end to end in
tests/test_cli.py.
"""

from __future__ import annotations

import random
import threading
from datetime import datetime, timezone

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from monitor.metrics import Metrics
from monitor.model.base import Classifier
from monitor.pipeline import CameraRouting, InferenceWorker, Pipeline, is_positive
from monitor.sample_queue import SampleQueue
from monitor.types import Frame, Prediction, QueueReason
from rollout.policy import ManualPolicy

LABELS = ("grizzly", "black", "polar", "sloth", "panda", "teddy", "none")
ALERT = ("grizzly", "black", "polar", "sloth", "panda")


class ScriptedClassifier(Classifier):
    """Reads the label and confidence a test painted into the image's first pixel."""

    model_id = "scripted@test"
    labels = LABELS

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []

    def predict_batch(self, images):
        self.batch_sizes.append(len(images))
        predictions = []
        for image in images:
            label = LABELS[int(image[0, 0, 0])]
            confidence = image[0, 0, 1] / 255
            rest = (1 - confidence) / (len(LABELS) - 1)
            probs = {name: (confidence if name == label else rest) for name in LABELS}
            predictions.append(Prediction.from_probabilities(probs, self.model_id))
        return predictions


def frame(camera: str, label: str, confidence: float) -> Frame:
    image = np.zeros((8, 8, 3), np.uint8)
    image[0, 0, 0] = LABELS.index(label)
    image[0, 0, 1] = round(confidence * 255)
    return Frame(camera_id=camera, image=image, captured_at=datetime.now(timezone.utc))


def make_pipeline(persist, negative_rate=0.0, seed=1):
    metrics = Metrics(CollectorRegistry())
    cameras = {"gate": CameraRouting("north", 0.5), "strict": CameraRouting("north", 0.9)}
    pipeline = Pipeline(
        classifier=ScriptedClassifier(), policy=ManualPolicy(negative_rate, random.Random(seed)),
        persist=persist, cameras=cameras, alert_labels=ALERT, metrics=metrics,
    )
    return pipeline, metrics


@pytest.mark.parametrize(
    "label, confidence, threshold, positive",
    [
        ("grizzly", 0.50, 0.5, True),     # exactly at the threshold counts
        ("grizzly", 0.49, 0.5, False),
        ("panda", 0.95, 0.9, True),
        ("teddy", 0.99, 0.5, False),      # teddy bears never alarm
        ("none", 0.99, 0.5, False),
    ],
)
def test_is_positive(label, confidence, threshold, positive):
    probs = {name: 0.0 for name in LABELS}
    probs[label] = confidence
    probs["none" if label != "none" else "teddy"] += 1 - confidence
    prediction = Prediction(label, confidence, probs, "m")
    assert is_positive(prediction, frozenset(ALERT), threshold) is positive


def test_positives_are_queued_negatives_are_not_without_sampling():
    stored = []
    pipeline, metrics = make_pipeline(stored.extend)
    outcomes = pipeline.process([
        frame("gate", "grizzly", 0.8), frame("strict", "grizzly", 0.8), frame("gate", "teddy", 0.9),
    ])
    assert [o.route.review_reason for o in outcomes] == [QueueReason.POSITIVE, None, None]
    assert all(not o.route.alert for o in outcomes)  # manual stage alerts no one
    assert stored == outcomes
    assert metrics.registry.get_sample_value(
        "monitor_predictions_total", {"site": "north", "camera": "gate", "label": "grizzly"}) == 1
    assert metrics.registry.get_sample_value(
        "monitor_review_items_queued_total", {"site": "north", "camera": "gate", "reason": "positive"}) == 1


def test_negative_sample_rate_is_respected():
    pipeline, _ = make_pipeline(lambda outcomes: None, negative_rate=0.2, seed=7)
    outcomes = pipeline.process([frame("gate", "none", 0.9) for _ in range(2000)])
    sampled = sum(o.route.review_reason is QueueReason.NEGATIVE_SAMPLE for o in outcomes)
    assert 330 <= sampled <= 470  # 400 expected; +-3.5 sigma


def test_store_failure_is_retried_and_nothing_is_lost():
    stored, failures = [], [2]

    def flaky(outcomes):
        if failures[0]:
            failures[0] -= 1
            raise OSError("No space left on device")
        stored.extend(outcomes)

    pipeline, metrics = make_pipeline(flaky)
    pipeline.process([frame("gate", "grizzly", 0.9)])
    pipeline.process([frame("gate", "black", 0.9)])
    assert stored == [] and pipeline.pending_outcomes == 2
    pipeline.process([])  # the worker's idle tick retries
    assert [o.prediction.label for o in stored] == ["grizzly", "black"]
    assert pipeline.pending_outcomes == 0
    assert metrics.registry.get_sample_value("monitor_store_failures_total", {"site": "north"}) == 2


def test_worker_batches_across_cameras_and_drains_on_stop():
    stored = []
    lock = threading.Lock()

    def persist(outcomes):
        with lock:
            stored.extend(outcomes)

    pipeline, _ = make_pipeline(persist)
    classifier = pipeline._classifier
    queue = SampleQueue(64)
    for i in range(20):
        queue.offer(frame("gate" if i % 2 else "strict", "none", 0.9))
    worker = InferenceWorker(queue, pipeline, batch_size=8, batch_wait=0.05)
    worker.start()
    worker.stop(timeout=10)
    assert not worker.alive
    assert len(stored) == 20
    assert classifier.batch_sizes == [8, 8, 4]
