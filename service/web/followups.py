"""After the answer: what an inference request's logits still tell (the labels each version predicts),
and the copy a canary's or a shadow's comparison needs (``service/routing/split.py`` decides which),
run once the answer has been sent, so that the client waits for none of it.

Copies are bounded and dropped first under load: a worker holds at most ``COPIES`` of them at once (in
flight to the runtime, or queued for the thread that sends them); a copy that finds them all taken is
dropped, and so is one the runtime refuses (its queue full, its deadline passed); none is retried. Each
outcome is counted (``trainserve_comparison_copies_total``), and each compared example
(``trainserve_compared_examples_total``, agree when both versions give the same label). The event loop
sends its copies itself (``LoopFollowups``); a Flask worker hands them to one thread once the response is
closed (``ThreadFollowups``). The functions that compare are pure and shared by both.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.contract.manifest import Manifest
from service.errors import DeadlineExceeded, NotReady, QueueFull, ServiceError
from service.handoff.catalog import ServedModel
from service.metrics import Metrics
from service.routing.split import Routed
from service.web.confidence import calibrated

log = logging.getLogger(__name__)

COPIES = 8  # copies one worker holds at once; more are dropped
COPY_DEADLINE_S = 2.0  # a copy not answered by then is dropped: it must never hold a slot for long
# The runtime's refusals that mean load (the copy is dropped), as opposed to a candidate that fails.
_LOAD = (QueueFull, DeadlineExceeded, NotReady)


@dataclass(slots=True)
class Followup:
    """What an answered request leaves for after its answer."""

    routed: Routed
    inputs: np.ndarray
    logits: np.ndarray


def decisions(manifest: Manifest, logits: np.ndarray) -> np.ndarray:
    """Each example's decision, comparable row by row: the top class (multiclass, whatever the "not a
    digit" flag), the class the threshold gives (binary), or the set of labels (multilabel, bool columns)."""
    if manifest.task == "multiclass":
        return logits.argmax(axis=1)
    positive = 1.0 / (1.0 + np.exp(-calibrated(logits, manifest).astype(np.float64)))
    chosen = positive >= manifest.threshold
    return chosen[:, 0].astype(np.int64) if manifest.task == "binary" else chosen


def label_counts(manifest: Manifest, logits: np.ndarray) -> dict[str, int]:
    """How many examples got each label (multilabel: each label an example gets)."""
    chosen = decisions(manifest, logits)
    counts = chosen.sum(axis=0) if chosen.ndim == 2 else np.bincount(chosen, minlength=len(manifest.labels))
    return {manifest.labels[i]: int(n) for i, n in enumerate(counts.tolist()) if n}


def agreement(first: Manifest, first_logits: np.ndarray, second: Manifest, second_logits: np.ndarray) -> int:
    """How many examples the two versions give the same label."""
    a, b = decisions(first, first_logits), decisions(second, second_logits)
    same = (a == b) if a.ndim == 1 else (a == b).all(axis=1)
    return int(same.sum())


class Recorder:
    """The metrics of what follows answers (label children resolved once per version and label)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._labels: dict[tuple[str, str, str], Any] = {}

    def labels(self, model: ServedModel, logits: np.ndarray) -> None:
        """Count the labels ``model`` predicted."""
        m = model.manifest
        for label, count in label_counts(m, logits).items():
            key = (m.name, m.version, label)
            child = self._labels.get(key)
            if child is None:
                child = self._labels[key] = self.metrics.predicted.labels(*key)
            child.inc(count)

    def copy(self, routed: Routed, outcome: str) -> None:
        """Count one copy's outcome: compared, dropped or failed."""
        m = routed.candidate.manifest
        self.metrics.copies.labels(m.name, m.version, routed.compared_role, outcome).inc()

    def compared(self, followup: Followup, other_logits: np.ndarray) -> None:
        """Count the agreement of a request's answer and its copy's."""
        routed = followup.routed
        assert routed.other is not None
        same = agreement(routed.model.manifest, followup.logits, routed.other.manifest, other_logits)
        m, role = routed.candidate.manifest, routed.compared_role
        self.copy(routed, "compared")
        if same:
            self.metrics.compared.labels(m.name, m.version, role, "agree").inc(same)
        if len(other_logits) - same:
            self.metrics.compared.labels(m.name, m.version, role, "disagree").inc(len(other_logits) - same)

    def outcome(self, followup: Followup, run: Callable[[], np.ndarray]) -> None:
        """Run a copy (``run`` gives its logits or raises) and count what came of it."""
        try:
            logits = run()
        except _LOAD:
            self.copy(followup.routed, "dropped")
        except ServiceError as exc:
            log.debug("a %s copy failed: %s", followup.routed.compared_role, exc.message)
            self.copy(followup.routed, "failed")
        except Exception:  # a comparison must never take a worker's loop or thread down
            log.exception("a %s copy failed", followup.routed.compared_role)
            self.copy(followup.routed, "failed")
        else:
            self.compared(followup, logits)


class LoopFollowups:
    """An event loop's followups: copies sent on the loop, at most ``copies`` at once."""

    def __init__(self, client: Any, recorder: Recorder, copies: int = COPIES) -> None:
        self.client = client  # service.handoff.grouping.GroupingClient
        self.recorder = recorder
        self.copies = copies
        self.in_flight = 0

    def answered(self, followup: Followup) -> None:
        """The answer has been sent: count its labels and send its copy, if it has one and room."""
        self.recorder.labels(followup.routed.model, followup.logits)
        other = followup.routed.other
        if other is None:
            return
        if self.in_flight >= self.copies:
            self.recorder.copy(followup.routed, "dropped")
            return
        self.in_flight += 1
        future = self.client.infer(other, followup.inputs, time.monotonic() + COPY_DEADLINE_S)
        future.add_done_callback(functools.partial(self._done, followup))

    def _done(self, followup: Followup, future: Any) -> None:
        self.in_flight -= 1
        if future.cancelled():
            self.recorder.copy(followup.routed, "dropped")
            return
        self.recorder.outcome(followup, future.result)


class ThreadFollowups:
    """A Flask worker's followups: copies queued (at most ``copies``) for one thread, started on first use
    (in the worker, never before a fork)."""

    def __init__(self, client: Any, recorder: Recorder, copies: int = COPIES) -> None:
        self.client = client  # service.handoff.client.RuntimeClient
        self.recorder = recorder
        self._queue: queue.Queue[Followup | None] = queue.Queue(maxsize=copies)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def answered(self, followup: Followup) -> None:
        """The response is closed: count its labels and queue its copy, if it has one and there is room."""
        self.recorder.labels(followup.routed.model, followup.logits)
        if followup.routed.other is None:
            return
        self._start()
        try:
            self._queue.put_nowait(followup)
        except queue.Full:
            self.recorder.copy(followup.routed, "dropped")

    def _start(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="comparisons", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        while (followup := self._queue.get()) is not None:
            other = followup.routed.other
            assert other is not None
            self.recorder.outcome(followup, functools.partial(
                self.client.infer, other, followup.inputs, time.monotonic() + COPY_DEADLINE_S))

    def close(self) -> None:
        """End the thread after the copy it is running (those still queued are dropped, uncounted)."""
        if self._thread is None:
            return
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()
        with contextlib.suppress(queue.Full):  # a request thread queued one meanwhile: it ends after it
            self._queue.put_nowait(None)
