"""Dynamic batching: merge concurrent requests for one model into one forward pass.

Contract of :class:`Batcher`, exactly:

- ``submit(rows, deadline)`` queues ``rows`` (an array whose first dimension is N examples) and blocks the
  calling thread until its own N output rows are back, in order. N larger than ``max_batch_size`` is split
  into chunks of at most ``max_batch_size`` rows, queued together, and the outputs are joined again.
- The queue is FIFO and holds at most ``max_queue`` chunks; when a request does not fit, ``submit`` raises
  :class:`QueueFull` at once (HTTP 429) and queues nothing.
- At most one forward pass runs at a time. A request that finds the model idle and the queue empty, and
  fits in one batch, runs its forward pass at once in its own thread (the "leader" path: no hand-off to
  another thread and back, which costs two thread wake-ups on every lone request). Everything else is
  queued for the batching thread.
- The batching thread forms batches: it blocks on the queue for the first chunk (and until no forward
  pass runs), takes every chunk already queued, in order, while the rows fit in ``max_batch_size``, and
  runs the batch at once. Only when it found concurrent traffic (more than one chunk) and there is room
  left does it wait for more, until ``max_batch_delay`` after the first chunk was queued. So a lone
  request never waits for company, and under load the requests that arrive while a batch runs form the
  next one.
- ``fn`` receives the list of the batch's arrays and returns one array whose first dimension is the sum of
  their rows; the batcher checks that and hands each request its own slice.
- If ``fn`` raises, or returns the wrong number of rows, every request in that batch fails with
  :class:`InferenceFailed` (HTTP 500) and the thread goes on with the next batch.
- A request whose deadline passes while it waits fails with :class:`DeadlineExceeded` (HTTP 504); if it is
  still queued it is dropped, never computed. A leader's forward pass cannot be interrupted: if its
  deadline passed by the time it ends, it fails with :class:`DeadlineExceeded` then.
- ``close()`` refuses new requests (:class:`NotReady`, HTTP 503), runs everything already queued, and joins
  the thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from service.errors import DeadlineExceeded, InferenceFailed, NotReady, QueueFull

log = logging.getLogger(__name__)

BatchFn = Callable[[Sequence[np.ndarray]], np.ndarray]


@dataclass(frozen=True)
class BatchStats:
    """What one batch did, for metrics."""

    rows: int
    requests: int
    queue_wait_s: tuple[float, ...]  # one per chunk: from queued to the start of its forward pass
    compute_s: float
    failed: bool


class BatchObserver(Protocol):
    """Receives the batcher's measurements (service.metrics implements it)."""

    def queue_depth(self, depth: int) -> None: ...

    def batch_done(self, stats: BatchStats) -> None: ...


class _NullObserver:
    def queue_depth(self, depth: int) -> None:
        pass

    def batch_done(self, stats: BatchStats) -> None:
        pass


@dataclass(eq=False)
class _Chunk:
    rows: np.ndarray
    deadline: float  # time.monotonic()
    queued_at: float = field(default_factory=time.monotonic)
    future: Future[np.ndarray] = field(default_factory=Future)


class Batcher:
    """One model's request queue and the thread that runs it in batches (see the module docstring)."""

    def __init__(self, fn: BatchFn, name: str, max_batch_size: int, max_batch_delay_s: float,
                 max_queue: int, observer: BatchObserver | None = None) -> None:
        self._fn = fn
        self.name = name
        self.max_batch_size = max_batch_size
        self.max_batch_delay_s = max_batch_delay_s
        self.max_queue = max_queue
        self._observer = observer or _NullObserver()
        self._queue: deque[_Chunk] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._busy = False  # a forward pass is running, in the batching thread or in a leading request's
        self._pass_s = 0.0  # how long a recent forward pass took (moving average): what waiting may cost
        self._thread = threading.Thread(target=self._run, name=f"batcher-{name}", daemon=True)

    def start(self) -> Batcher:
        """Start the batching thread (inside the worker process, never before a fork)."""
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        """True while the thread accepts and runs requests."""
        return self._thread.is_alive() and not self._closed

    def submit(self, rows: np.ndarray, deadline: float) -> np.ndarray:
        """Run ``rows`` through the model in some batch; block until done or ``deadline`` (monotonic)."""
        n = len(rows)
        chunks = [_Chunk(rows[i:i + self.max_batch_size], deadline) for i in range(0, n, self.max_batch_size)]
        with self._cond:
            if self._closed:
                raise NotReady(f"model {self.name} is shutting down")
            lead = len(chunks) == 1 and not self._busy and not self._queue
            if lead:
                self._busy = True
            else:
                if len(self._queue) + len(chunks) > self.max_queue:
                    raise QueueFull(f"model {self.name} has {len(self._queue)} requests queued; "
                                    "retry shortly")
                self._queue.extend(chunks)
                self._observer.queue_depth(len(self._queue))
                self._cond.notify()
        if lead:
            return self._lead(chunks[0])
        outputs = [self._wait(chunk) for chunk in chunks]
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs)

    def _lead(self, chunk: _Chunk) -> np.ndarray:
        # The model is idle and nobody waits: run in the caller's thread, sparing two thread wake-ups.
        chunk.future.set_running_or_notify_cancel()
        try:
            self._execute([chunk])
        finally:
            with self._cond:
                self._busy = False
                if self._queue:
                    self._cond.notify()  # what queued meanwhile is the batching thread's next batch
        if time.monotonic() > chunk.deadline:
            raise DeadlineExceeded(f"model {self.name} did not answer before the request deadline")
        return chunk.future.result()

    def _wait(self, chunk: _Chunk) -> np.ndarray:
        try:
            return chunk.future.result(timeout=max(0.0, chunk.deadline - time.monotonic()))
        except (FutureTimeout, CancelledError):
            chunk.future.cancel()  # dropped if still queued; a running batch just discards it
            raise DeadlineExceeded(f"model {self.name} did not answer before the request deadline") from None

    def close(self, timeout: float | None = None) -> None:
        """Refuse new requests, finish the queued ones, and join the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                if batch:
                    self._execute(batch)
            finally:
                with self._cond:
                    self._busy = False

    def _next_batch(self) -> list[_Chunk] | None:
        with self._cond:
            while not self._queue or self._busy:
                if self._closed and not self._queue:
                    return None
                self._cond.wait(timeout=1.0)
            self._busy = True
            batch = self._take([])
            delay = min(self.max_batch_delay_s, self._pass_s)
            if len(batch) > 1 and delay > 0:
                until = batch[0].queued_at + delay
                while self._room(batch) > 0 and not self._closed:
                    remaining = until - time.monotonic()
                    if remaining <= 0:
                        break
                    if not self._queue:
                        self._cond.wait(remaining)
                    elif not self._take(batch):
                        break  # the next chunk does not fit: run what we have
            self._observer.queue_depth(len(self._queue))
            return batch

    def _room(self, batch: list[_Chunk]) -> int:
        return self.max_batch_size - sum(len(c.rows) for c in batch)

    def _take(self, batch: list[_Chunk]) -> list[_Chunk]:
        """Move queued chunks into ``batch`` while they fit; return the chunks added."""
        added: list[_Chunk] = []
        room = self._room(batch)
        now = time.monotonic()
        while self._queue and (len(self._queue[0].rows) <= room or not batch):
            chunk = self._queue.popleft()
            if not chunk.future.set_running_or_notify_cancel():
                continue  # its caller gave up already
            if chunk.deadline <= now:
                chunk.future.set_exception(DeadlineExceeded(f"model {self.name}: deadline passed in queue"))
                continue
            batch.append(chunk)
            added.append(chunk)
            room -= len(chunk.rows)
        return added

    def _execute(self, batch: list[_Chunk]) -> None:
        started = time.monotonic()
        sizes = [len(c.rows) for c in batch]
        total = sum(sizes)
        try:
            out = self._fn([c.rows for c in batch])
            if len(out) != total:
                raise InferenceFailed(f"the model returned {len(out)} rows for {total} inputs")
        except Exception as exc:
            log.exception("batch of %d rows for %s failed", total, self.name)
            error = exc if isinstance(exc, InferenceFailed) else InferenceFailed(
                f"inference failed for model {self.name}: {type(exc).__name__}")
            for chunk in batch:
                chunk.future.set_exception(error)
            self._report(batch, total, started, time.monotonic() - started, failed=True)
            return
        took = time.monotonic() - started  # the forward pass alone, before the results are handed out
        self._pass_s = took if not self._pass_s else 0.8 * self._pass_s + 0.2 * took
        offset = 0
        for chunk, size in zip(batch, sizes, strict=True):
            chunk.future.set_result(out[offset:offset + size])
            offset += size
        self._report(batch, total, started, took, failed=False)

    def _report(self, batch: list[_Chunk], total: int, started: float, took: float, failed: bool) -> None:
        stats = BatchStats(rows=total, requests=len(batch),
                           queue_wait_s=tuple(started - c.queued_at for c in batch),
                           compute_s=took, failed=failed)
        try:
            self._observer.batch_done(stats)
        except Exception:  # metrics must never take the batcher down
            log.exception("batch observer failed")
