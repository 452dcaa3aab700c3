"""The sampler's interval jobs: one per camera, coalesced, isolated from each other."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone

import numpy as np

from monitor.sample_queue import SampleQueue
from monitor.sampler import Sampler
from monitor.sources.base import Source
from monitor.types import Frame


class CountingSource(Source):
    """Returns one tiny frame per poll, optionally after a delay (a camera that hangs)."""

    def __init__(self, camera_id: str, delay: float = 0.0, fail: bool = False) -> None:
        super().__init__(camera_id)
        self.delay, self.fail = delay, fail
        self.polls = 0
        self.concurrent = 0
        self.max_concurrent = 0
        self.closed = False
        self._lock = threading.Lock()

    def poll(self):
        with self._lock:
            self.polls += 1
            self.concurrent += 1
            self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            time.sleep(self.delay)
            if self.fail:
                self.status.frames_failed += 1
                raise RuntimeError("rtsp://admin:hunter2@cam/live went away")
            image = np.zeros((4, 4, 3), np.uint8)
            return [Frame(camera_id=self.camera_id, image=image, captured_at=datetime.now(timezone.utc))]
        finally:
            with self._lock:
                self.concurrent -= 1

    def close(self):
        self.closed = True


def test_each_camera_is_sampled_on_its_interval_and_a_hung_one_delays_no_other(caplog):
    fast = CountingSource("fast")
    hung = CountingSource("hung", delay=1.5)
    broken = CountingSource("broken", fail=True)
    queue: SampleQueue[Frame] = SampleQueue(1000)
    failures: list[tuple[str, int]] = []
    sampler = Sampler({"fast": fast, "hung": hung, "broken": broken},
                      {"fast": 0.1, "hung": 0.1, "broken": 0.1}, queue,
                      on_failed=lambda camera, n: failures.append((camera, n)))
    sampler.start()
    time.sleep(1.2)
    sampler.stop()
    assert 8 <= fast.polls <= 14  # every 0.1 s for 1.2 s, undisturbed by the hung camera
    assert hung.polls <= 2 and hung.max_concurrent == 1  # never overlapping itself
    assert broken.polls >= 8  # a failing poll does not kill its job
    assert {camera for camera, _ in failures} == {"broken"}
    assert sum(n for _, n in failures) == broken.status.frames_failed == broken.polls
    assert "hunter2" not in (broken.status.last_error or "") and "went away" in broken.status.last_error
    assert "hunter2" not in caplog.text
    assert fast.closed and hung.closed and broken.closed
    frames = queue.take_batch(1000, 0.0)
    assert {f.camera_id for f in frames} == {"fast", "hung"}
