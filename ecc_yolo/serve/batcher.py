"""Dynamic micro-batching: requests that arrive close together run as one forward pass on a worker thread.

The event loop only enqueues and awaits; all model work happens on one worker thread, so the server keeps answering
health checks and metrics while a batch runs, and torch gets the CPU cores to itself (two forward passes at once on
the same cores would only contend). A batch is the oldest waiting request plus every request with the same batch key
(e.g. features of the same input size) that is already queued or arrives within `max_wait_s` of the batch opening, up
to `max_batch`; requests with other keys keep their place for the next batch.

Each request may carry a deadline (`time.monotonic()` seconds): one still waiting at its deadline is answered
`DeadlineExceeded` instead of being computed, and one whose future was cancelled (its client went away) is skipped,
so overload does not turn into work nobody waits for.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any


class Overloaded(Exception):
    """The queue is full: the request is refused rather than queued without bound."""


class DeadlineExceeded(Exception):
    """The request's deadline passed while it waited: it was not computed."""


@dataclass
class _Request:
    key: Hashable
    item: Any
    deadline: float = math.inf  # time.monotonic() seconds
    future: Future = field(default_factory=Future)


class MicroBatcher:
    """Batches submitted items per key and runs `run(key, items) -> answers` on a worker thread."""

    def __init__(
        self,
        run: Callable[[Hashable, list[Any]], list[Any]],
        max_batch: int = 8,
        max_wait_s: float = 0.01,
        max_queue: int = 256,
        on_batch: Callable[[Hashable, int, float], None] | None = None,
    ) -> None:
        """Args:
        run: answers a list of items sharing one key, in order.
        max_batch: most items in one call of `run` (1 disables batching).
        max_wait_s: longest the first item of a batch waits for others, seconds.
        max_queue: most items waiting; `submit` raises Overloaded beyond it.
        on_batch: called after each batch with (key, batch size, run time in seconds), e.g. for metrics.
        """
        if max_batch < 1 or max_wait_s < 0 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be >= 1 and max_wait_s >= 0")
        self.run, self.max_batch, self.max_wait_s, self.max_queue = run, max_batch, max_wait_s, max_queue
        self.on_batch = on_batch
        self.batch_seconds = 0.0  # running mean of one batch's run time (for Retry-After estimates)
        self._queue: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    def start(self) -> MicroBatcher:
        """Start the worker thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="ecc-batcher", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        """Stop taking items, finish the queued ones, stop the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, key: Hashable, item: Any, deadline: float = math.inf) -> Future:
        """Queue `item` until `deadline` (`time.monotonic()` seconds); the future resolves to `(answer, batch size)`,
        to the exception `run` raised, or to `DeadlineExceeded`. Cancel the future to withdraw the item.

        Raises:
            Overloaded: the queue is full.
            RuntimeError: the batcher is closed.
        """
        request = _Request(key, item, deadline)
        with self._cond:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            if len(self._queue) >= self.max_queue:
                self._drop_stale()
            if len(self._queue) >= self.max_queue:  # every place is taken by a live item
                raise Overloaded(f"{len(self._queue)} requests are already waiting")
            self._queue.append(request)
            self._cond.notify_all()
        return request.future

    def __len__(self) -> int:
        """Items waiting (not yet in a running batch; withdrawn ones do not count)."""
        with self._cond:
            return sum(not r.future.cancelled() for r in self._queue)

    def alive(self) -> bool:
        """Whether the worker thread runs (it stops when closed, or if something killed it)."""
        return self._thread is not None and self._thread.is_alive()

    def wait_estimate(self) -> float:
        """Seconds a request queued now would wait before its batch is done, from the mean batch time."""
        return (len(self._queue) / self.max_batch + 1) * self.batch_seconds

    def _drop_stale(self) -> None:
        """Free the places of cancelled and expired items (under the lock), so they do not refuse live ones."""
        now, kept = time.monotonic(), deque()
        for r in self._queue:
            if r.future.cancelled():
                continue
            if r.deadline <= now:
                if r.future.set_running_or_notify_cancel():
                    r.future.set_exception(DeadlineExceeded("the deadline passed in the queue"))
                continue
            kept.append(r)
        self._queue = kept

    def _next_batch(self) -> list[_Request] | None:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if not self._queue:
                return None  # closed and drained
            batch = [self._queue.popleft()]
            deadline = time.perf_counter() + self.max_wait_s
            while len(batch) < self.max_batch:
                self._take_matching(batch)
                remaining = deadline - time.perf_counter()
                if len(batch) >= self.max_batch or remaining <= 0 or self._closed:
                    break
                self._cond.wait(remaining)
            return batch

    def _take_matching(self, batch: list[_Request]) -> None:
        """Move queued items with the batch's key into it (keeping the others' order)."""
        key, kept = batch[0].key, deque()
        while self._queue:
            r = self._queue.popleft()
            (batch if r.key == key and len(batch) < self.max_batch else kept).append(r)
        self._queue.extend(kept)

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            now, live = time.monotonic(), []
            for r in batch:
                if not r.future.set_running_or_notify_cancel():
                    continue  # cancelled: its client went away
                if r.deadline <= now:
                    r.future.set_exception(DeadlineExceeded(f"the deadline passed {now - r.deadline:.3f} s before "
                                                            f"its batch ran"))
                    continue
                live.append(r)
            if not live:
                continue
            t0 = time.perf_counter()
            try:
                answers = self.run(live[0].key, [r.item for r in live])
                if len(answers) != len(live):
                    raise RuntimeError(f"run answered {len(answers)} of {len(live)} items")
            except Exception as e:  # every caller must get an answer, even when the model code fails
                for r in live:
                    r.future.set_exception(e)
                continue
            elapsed = time.perf_counter() - t0
            self.batch_seconds = elapsed if not self.batch_seconds else 0.8 * self.batch_seconds + 0.2 * elapsed
            for r, answer in zip(live, answers):
                r.future.set_result((answer, len(live)))
            if self.on_batch is not None:
                self.on_batch(live[0].key, len(live), elapsed)
