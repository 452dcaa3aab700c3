"""The bounded hand-off between the sampler and the inference worker.

Live cameras must never build an unbounded backlog when inference falls behind: a
still from a minute ago is worth less than the one just taken. :meth:`offer` therefore
drops the *oldest* waiting sample when the queue is full and reports it, while
:meth:`put` (used by `monitor scan`, where every sample matters) waits for room.
:meth:`take_batch` gives the worker up to ``max_items`` samples, waiting at most
``max_wait`` seconds after the first one arrives so batches fill across cameras.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class QueueClosed(Exception):
    """The queue was closed; nothing more can be put into it."""


class SampleQueue(Generic[T]):
    """A thread-safe FIFO with a size limit, drop-oldest offers and batched takes.

    Args:
        maxsize: most items waiting at once.
        on_drop: called (outside the lock) with each item dropped to make room.
    """

    def __init__(self, maxsize: int, on_drop: Callable[[T], None] | None = None) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        self._items: collections.deque[T] = collections.deque()
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._closed = False
        self._on_drop = on_drop
        self.dropped = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    def offer(self, item: T) -> None:
        """Add ``item`` now; if the queue is full, drop the oldest waiting item.

        Raises:
            QueueClosed: after :meth:`close`.
        """
        dropped: T | None = None
        with self._lock:
            if self._closed:
                raise QueueClosed("sample queue is closed")
            if len(self._items) >= self.maxsize:
                dropped = self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            self._not_empty.notify()
        if dropped is not None and self._on_drop is not None:
            self._on_drop(dropped)

    def put(self, item: T, timeout: float | None = None) -> None:
        """Add ``item``, waiting for room rather than dropping anything.

        Raises:
            QueueClosed: the queue was closed while waiting.
            TimeoutError: no room within ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while len(self._items) >= self.maxsize and not self._closed:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError("sample queue stayed full")
                self._not_full.wait(remaining)
            if self._closed:
                raise QueueClosed("sample queue is closed")
            self._items.append(item)
            self._not_empty.notify()

    def take_batch(self, max_items: int, max_wait: float, idle_timeout: float | None = None) -> list[T]:
        """Take up to ``max_items``, waiting ``max_wait`` after the first for more to come.

        Args:
            max_items: largest batch.
            max_wait: seconds to keep filling a batch once it has its first item.
            idle_timeout: seconds to wait for a first item; None waits until one arrives
                or the queue is closed.

        Returns:
            The batch, oldest first; empty when nothing arrived in time or the queue is
            closed and drained.
        """
        with self._lock:
            if not self._not_empty.wait_for(lambda: self._items or self._closed, idle_timeout):
                return []
            deadline = time.monotonic() + max_wait
            while len(self._items) < max_items and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._not_empty.wait(remaining):
                    break
            batch = [self._items.popleft() for _ in range(min(max_items, len(self._items)))]
            self._not_full.notify_all()
            return batch

    def close(self) -> None:
        """Refuse new items; waiting takers get what is left, then empty batches."""
        with self._lock:
            self._closed = True
            self._not_empty.notify_all()
            self._not_full.notify_all()
