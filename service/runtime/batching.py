"""Dynamic batching: which queued requests for one model run together in the next forward pass.

The model runtime (``service/runtime/server.py``) runs one event loop per device; this module is its
batching policy, with no threads, sockets or torch, so that its contract can be tested exactly.

Contract of :class:`BatchQueue`:

- ``put(request)`` queues one request (at most ``max_batch_size`` rows: clients split larger ones). The
  queue is FIFO and holds at most ``max_queue`` requests; one more raises :class:`QueueFull` (HTTP 429)
  and queues nothing.
- ``take(now)`` starts a batch: the oldest request, then every following one while their rows fit in
  ``max_batch_size``. ``top_up(batch, now)`` adds more that fit, in order, to a batch not yet run.
  Requests whose deadline has passed are never put in a batch: they come back in ``expired`` (HTTP 504).
- ``wait_s(batch, now)`` says how long the loop may still wait for company before running ``batch``: zero
  for a lone request (an idle model runs it at once), and otherwise no longer than ``max_batch_delay_s``
  after the batch's first request was queued, nor than a recent forward pass took (waiting longer than a
  pass costs more than running two). Requests that arrive while a pass runs form the next batch.
- ``pass_done(seconds)`` feeds the recent forward-pass time (a moving average) into that rule.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from service.errors import QueueFull


@dataclass(frozen=True)
class BatchStats:
    """What one batch did, for metrics."""

    rows: int
    requests: int
    queue_wait_s: tuple[float, ...]  # one per request: from queued to the start of its forward pass
    compute_s: float
    failed: bool


T = TypeVar("T")


@dataclass(eq=False, slots=True)
class Queued(Generic[T]):
    """One request waiting for a forward pass; ``item`` is whatever the caller needs to answer it."""

    item: T
    rows: int
    deadline: float  # time.monotonic()
    queued_at: float = field(default_factory=time.monotonic)


class BatchQueue(Generic[T]):
    """One model's FIFO of requests and the rule that groups them into batches (module docstring)."""

    def __init__(self, name: str, max_batch_size: int, max_batch_delay_s: float, max_queue: int) -> None:
        self.name = name
        self.max_batch_size = max_batch_size
        self.max_batch_delay_s = max_batch_delay_s
        self.max_queue = max_queue
        self._queue: deque[Queued[T]] = deque()
        self._pass_s = 0.0

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def oldest(self) -> float | None:
        """When the request at the head was queued (None when the queue is empty)."""
        return self._queue[0].queued_at if self._queue else None

    def put(self, request: Queued[T]) -> None:
        """Queue one request; QueueFull when the queue holds ``max_queue`` already."""
        if request.rows > self.max_batch_size:
            raise ValueError(f"{request.rows} rows is more than the batch size {self.max_batch_size}")
        if len(self._queue) >= self.max_queue:
            raise QueueFull(f"model {self.name} has {len(self._queue)} requests queued; retry shortly")
        self._queue.append(request)

    def take(self, now: float, expired: list[Queued[T]]) -> list[Queued[T]]:
        """A new batch from the head of the queue (empty when nothing is queued)."""
        batch: list[Queued[T]] = []
        self.top_up(batch, now, expired)
        return batch

    def top_up(self, batch: list[Queued[T]], now: float, expired: list[Queued[T]]) -> int:
        """Move queued requests into ``batch`` while they fit; return how many were added."""
        room = self.max_batch_size - sum(r.rows for r in batch)
        added = 0
        while self._queue and self._queue[0].rows <= room:
            request = self._queue.popleft()
            if request.deadline <= now:
                expired.append(request)
                continue
            batch.append(request)
            room -= request.rows
            added += 1
        return added

    def wait_s(self, batch: list[Queued[T]], now: float) -> float:
        """How much longer ``batch`` may wait for more requests (0: run it now)."""
        if len(batch) < 2 or sum(r.rows for r in batch) >= self.max_batch_size:
            return 0.0
        delay = min(self.max_batch_delay_s, self._pass_s)
        return max(0.0, batch[0].queued_at + delay - now)

    def pass_done(self, seconds: float) -> None:
        """Record how long a forward pass took."""
        self._pass_s = seconds if not self._pass_s else 0.8 * self._pass_s + 0.2 * seconds

    def drop(self, keep: Callable[[T], bool]) -> list[Queued[T]]:
        """Remove and return every queued request for which ``keep(item)`` is false."""
        kept = deque(r for r in self._queue if keep(r.item))
        dropped = [r for r in self._queue if not keep(r.item)]
        self._queue = kept
        return dropped
