"""Dynamic batching: which queued requests for one model run together in the next forward pass.

The model runtime (``service/runtime/loop.py``) runs one event loop per device; this module is its
batching policy, with no threads, sockets or torch, so that its contract can be tested exactly.

Contract of :class:`BatchQueue`:

- ``put(entry)`` queues one entry: the rows of one or more requests that arrived together (at most
  ``max_batch_size`` rows: clients split larger ones). The queue is FIFO and holds at most ``max_queue``
  requests; an entry that would take it past that raises :class:`QueueFull` (HTTP 429) and queues
  nothing. So does one that could not start before its deadline, nor within ``max_wait_s``, at the pace
  of recent forward passes: it is refused at once, while its client still has time to go elsewhere,
  rather than answered 504 later.
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

T = TypeVar("T")


@dataclass(eq=False, slots=True)
class Queued(Generic[T]):
    """Rows waiting for a forward pass, of ``requests`` requests that arrived together; ``item`` is
    whatever the caller needs to answer them."""

    item: T
    rows: int
    deadline: float  # time.monotonic(): the latest of its requests' deadlines
    queued_at: float = field(default_factory=time.monotonic)
    requests: int = 1


class BatchQueue(Generic[T]):
    """One model's FIFO of requests and the rule that groups them into batches (module docstring)."""

    def __init__(self, name: str, max_batch_size: int, max_batch_delay_s: float, max_queue: int,
                 max_wait_s: float = float("inf")) -> None:
        self.name = name
        self.max_batch_size = max_batch_size
        self.max_batch_delay_s = max_batch_delay_s
        self.max_queue = max_queue
        self.max_wait_s = max_wait_s
        self._queue: deque[Queued[T]] = deque()
        self._requests = 0  # in the queue
        self._rows = 0
        self._pass_s = 0.0

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def oldest(self) -> float | None:
        """When the request at the head was queued (None when the queue is empty)."""
        return self._queue[0].queued_at if self._queue else None

    @property
    def requests(self) -> int:
        """Requests queued (an entry counts as many as it carries)."""
        return self._requests

    def put(self, request: Queued[T]) -> None:
        """Queue one entry; QueueFull when the queue is full or it could not start in time."""
        if request.rows > self.max_batch_size:
            raise ValueError(f"{request.rows} rows is more than the batch size {self.max_batch_size}")
        if self._requests + request.requests > self.max_queue:
            raise QueueFull(f"model {self.name} has {self._requests} requests queued; retry shortly")
        wait = self.expected_wait_s(request.rows)
        if wait > 0 and wait > min(request.deadline - request.queued_at, self.max_wait_s):
            raise QueueFull(f"model {self.name} has {self._rows} rows queued, about {wait * 1000:.0f} ms of "
                            "work: more than this request can wait; retry shortly")
        self._queue.append(request)
        self._requests += request.requests
        self._rows += request.rows

    def expected_wait_s(self, rows: int = 0) -> float:
        """How long ``rows`` more would wait before their forward pass starts, at the recent pace: the
        full passes ahead of them (nothing when they would run in the next one)."""
        return ((self._rows + rows - 1) // self.max_batch_size) * self._pass_s

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
            self._requests -= request.requests
            self._rows -= request.rows
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
        self._requests = sum(r.requests for r in kept)
        self._rows = sum(r.rows for r in kept)
        return dropped
