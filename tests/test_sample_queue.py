"""The bounded sample queue: drop-oldest offers, blocking puts, batched takes."""

from __future__ import annotations

import threading
import time

import pytest

from monitor.sample_queue import QueueClosed, SampleQueue


def test_offer_drops_the_oldest_and_reports_it():
    dropped = []
    queue = SampleQueue(3, on_drop=dropped.append)
    for item in range(5):
        queue.offer(item)
    assert dropped == [0, 1]
    assert queue.dropped == 2
    assert queue.take_batch(10, 0.0) == [2, 3, 4]


def test_take_batch_returns_at_most_max_items_oldest_first():
    queue = SampleQueue(100)
    for item in range(10):
        queue.offer(item)
    assert queue.take_batch(4, 0.0) == [0, 1, 2, 3]
    assert len(queue) == 6


def test_take_batch_waits_to_fill_across_producers():
    queue = SampleQueue(100)

    def produce():
        for item in range(8):
            queue.offer(item)
            time.sleep(0.01)

    threading.Thread(target=produce).start()
    batch = queue.take_batch(8, max_wait=2.0, idle_timeout=2.0)
    assert batch == list(range(8))


def test_take_batch_does_not_wait_past_max_wait():
    queue = SampleQueue(100)
    queue.offer("only")
    started = time.monotonic()
    assert queue.take_batch(16, max_wait=0.1) == ["only"]
    assert time.monotonic() - started < 1.0


def test_idle_timeout_gives_an_empty_batch():
    assert SampleQueue(4).take_batch(4, 0.0, idle_timeout=0.05) == []


def test_put_waits_for_room_instead_of_dropping():
    queue = SampleQueue(1)
    queue.put("first")
    taken = []
    threading.Timer(0.1, lambda: taken.extend(queue.take_batch(1, 0.0))).start()
    queue.put("second", timeout=2.0)
    assert taken == ["first"] and queue.take_batch(1, 0.0) == ["second"] and queue.dropped == 0
    queue.put("third")
    with pytest.raises(TimeoutError):
        queue.put("fourth", timeout=0.05)


def test_close_wakes_takers_and_refuses_new_items():
    queue = SampleQueue(4)
    queue.offer("left over")
    queue.close()
    assert queue.take_batch(4, 1.0) == ["left over"]
    assert queue.take_batch(4, 1.0) == []
    with pytest.raises(QueueClosed):
        queue.offer("late")
