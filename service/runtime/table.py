"""The runtime's model table: what it serves, what it is retiring, and the catalog workers read.

Invariants (``service/handoff/catalog.py`` states the workers' side; tests/service/runtime/test_table.py):

- Append-only: a request names its model by index, so an index is never reused; a dropped model leaves
  None.
- A new version is listed in the catalog at once; a retired one leaves the catalog but keeps its index in
  the message's ``retiring`` and still runs the requests addressed to it for a grace period (a request's
  deadline, so that every worker has seen the new epoch), and is dropped once that has passed and its
  queue is empty.
- Every change of the catalog bumps the epoch, and the state page shows it only after the new catalog
  message is ready: a worker that reads a new epoch and connects gets that catalog or a newer one.
- The arena layout only grows: a slot of an older connection still fits every model its catalog names.
- A version retired and added again (a rollback within the grace period) has two copies: dropping the old
  copy leaves the serving copy's metrics alone.

Only the loop thread changes it.
"""

from __future__ import annotations

import gc
import logging
import math
import mmap
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from service.contract.loading import LoadedModel
from service.handoff import protocol
from service.metrics import BatchStats, ExplainStats
from service.runtime.batching import BatchQueue

log = logging.getLogger(__name__)


class Observer:
    """What the loop reports per model (service.metrics.BatchRecorder implements it)."""

    def queue_depth(self, depth: int) -> None:
        """Current queue length."""

    def batch_done(self, stats: BatchStats) -> None:
        """One batch's size, waits and compute time."""

    def explain_queue_depth(self, depth: int) -> None:
        """Explanations of this model waiting now."""

    def explained(self, stats: ExplainStats) -> None:
        """One explanation's method, rows, wait, compute time and outcome."""


@dataclass
class Change:
    """What the model control asks of the loop: models to add, keys to retire, the refusals and routing
    states now, and (for a LOAD, UNLOAD or ROUTE request) the answer to send once the change is applied."""

    added: list[LoadedModel] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)
    refused: dict[str, str] | None = None  # None: unchanged
    reply: tuple[Any, int, str] | None = None  # (connection, status, message)
    routing: dict[str, Any] | None = None  # every model's routing state now (None: unchanged)

    def __bool__(self) -> bool:
        return bool(self.added or self.retired or self.refused is not None or self.reply
                    or self.routing is not None)


# A connection's arena: this many slots at most, and no more address space than ARENA_BYTES unless a slot
# alone is larger (a slot costs memory only once written: a worker that sends single images touches a
# page or two of each).
ARENA_SLOTS = 256
ARENA_BYTES = 256 << 20
MIN_SLOTS = 4


def arena_layout(models: list[LoadedModel], max_batch_size: int,
                 at_least: protocol.ArenaLayout | None = None) -> protocol.ArenaLayout:
    """A slot holds ``max_batch_size`` float32 examples of the largest model, and their logits (and never
    less than ``at_least``'s slot: an arena sent before still fits every model its catalog names)."""
    example = max((math.prod(m.manifest.input.shape) for m in models), default=1)
    classes = max((m.manifest.num_outputs for m in models), default=1)
    input_bytes, output_bytes = max_batch_size * example * 4, max_batch_size * classes * 4
    if at_least is not None:
        input_bytes = max(input_bytes, at_least.input_bytes)
        output_bytes = max(output_bytes, at_least.output_bytes)
    slot_size = protocol.ArenaLayout(input_bytes, output_bytes, 1).slot_size
    return protocol.ArenaLayout(input_bytes, output_bytes,
                                max(MIN_SLOTS, min(ARENA_SLOTS, ARENA_BYTES // slot_size)))


def catalog_message(listed: dict[int, LoadedModel], retiring: dict[str, int], layout: protocol.ArenaLayout,
            max_batch_size: int, refused: dict[str, str], started: float, epoch: int,
            routing: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a new connection learns: the listed models with their indices and devices, the retiring ones
    (a request resolved before the change may still address them), the routing states, and the arena's
    layout."""
    return {"pid": os.getpid(), "started": started, "epoch": epoch, "max_batch_size": max_batch_size,
            "input_bytes": layout.input_bytes, "output_bytes": layout.output_bytes, "slots": layout.slots,
            "models": [{"index": index, "manifest": m.manifest.to_dict(), "device": str(m.device),
                        "load_seconds": m.load_seconds, "format": m.format} for index, m in listed.items()],
            "retiring": retiring, "refused": refused, "routing": routing or {}}


class ModelTable:
    """The models by index, their queues and observers, and the catalog (see the module docstring)."""

    def __init__(self, max_batch_size: int, max_batch_delay_s: float, max_queue: int, max_wait_s: float,
                 observe: Callable[[LoadedModel], Observer] | None = None,
                 forget: Callable[[LoadedModel], None] | None = None, grace_s: float = 10.0) -> None:
        self.max_batch_size = max_batch_size
        self._batching = (max_batch_delay_s, max_queue, max_wait_s)
        self._observe = observe or (lambda model: Observer())
        self._forget = forget or (lambda model: None)
        self.grace_s = grace_s
        self.models: list[LoadedModel | None] = []
        self.queues: list[BatchQueue[Any]] = []
        self.observers: list[Observer] = []
        self.keys: list[str] = []
        self.listed: dict[int, LoadedModel] = {}  # in the catalog
        self.retiring: dict[int, float] = {}  # index -> when it may be dropped (once its queue is empty)
        self.refused: dict[str, str] = {}
        self.routing: dict[str, Any] = {}
        self.layout: protocol.ArenaLayout | None = None
        self.started = time.time()
        self.epoch = 0
        self.catalog_message: dict[str, Any] = {}
        # The state page every connection maps: its descriptor is sent in each greeting.
        self.state_fd = protocol.new_shared_memory(mmap.PAGESIZE)
        self.state = protocol.State(os.dup(self.state_fd), writable=True)

    def apply(self, change: Change) -> None:
        """Add, retire and record refusals (the loop thread only); a change bumps the epoch."""
        for model in change.added:
            if (old := self.listed_index(model.key)) is not None:
                self.retire(old)  # the same version again (its artifact replaced): the new one serves
            index = len(self.models)
            self.models.append(model)
            self.keys.append(model.key)
            self.queues.append(BatchQueue(model.key, self.max_batch_size, *self._batching))
            self.observers.append(self._observe(model))
            self.listed[index] = model
        for key in change.retired:
            if (old := self.listed_index(key)) is not None:
                self.retire(old)
        if change.refused is not None:
            self.refused = dict(change.refused)
        if change.routing is not None:
            self.routing = dict(change.routing)
        if change.added or change.retired or change.refused is not None or change.routing is not None:
            self._publish()
            if change.added:
                gc.freeze()  # the new model's objects live as long as it does: out of the collector's way
            log.info("serving %s (epoch %d)", ", ".join(m.key for m in self.listed.values()) or "nothing",
                     self.epoch)

    def _publish(self) -> None:
        """A new catalog, and its epoch in the state page, for every worker to see."""
        live = [m for m in self.models if m is not None]
        self.layout = arena_layout(live, self.max_batch_size, at_least=self.layout)
        self.epoch += 1
        retiring = {self.keys[i]: i for i in self.retiring}
        self.catalog_message = catalog_message(self.listed, retiring, self.layout, self.max_batch_size,
                                               self.refused, self.started, self.epoch, self.routing)
        self.state.epoch = self.epoch

    def listed_index(self, key: str) -> int | None:
        """The index under which ``key`` is listed in the catalog, if it is."""
        return next((i for i, m in self.listed.items() if m.key == key), None)

    def retire(self, index: int) -> None:
        """Unlist a model; it still runs what is addressed to it for the grace period."""
        del self.listed[index]
        self.retiring[index] = time.monotonic() + self.grace_s
        log.info("retiring %s: it answers the requests already addressed to it for %.0fs",
                 self.keys[index], self.grace_s)

    def sweep(self) -> float | None:
        """Drop retired models whose grace has passed and whose queue is empty; the seconds until the
        next one may go (None: none retiring)."""
        now = time.monotonic()
        for index, after in list(self.retiring.items()):
            if now >= after and not self.queues[index]:
                model, self.models[index] = self.models[index], None
                del self.retiring[index]
                self._dropped(index, model)
                self._publish()
        return max(0.0, min(self.retiring.values()) - now) + 0.01 if self.retiring else None

    def _dropped(self, index: int, model: LoadedModel | None) -> None:
        """Forget a dropped model's metrics, unless another copy of the same version is in the table: a
        version retired and added again (a rollback, a replaced artifact) is dropped by the timer set for
        its old copy, whose labels are the new copy's too."""
        key = self.keys[index]
        other = next((i for i, m in enumerate(self.models) if m is not None and self.keys[i] == key), None)
        if other is not None:
            log.info("dropped an earlier copy of %s; the one at index %d stays", key, other)
            return
        if model is not None:
            self._forget(model)
        log.info("dropped %s", key)  # after its metrics say so

    def close(self) -> None:
        """Release the state page."""
        self.state.close()
        os.close(self.state_fd)
