"""The automatic rollback: a canary that breaks its budget (``routing_state.Budget``) is stopped by itself.

The launcher runs one watcher per service, twice a second, and it does work only while some model has a
canary: it reads the routing files and the counters every process of the service writes (the Prometheus
multiprocess files, what ``/metrics`` shows), counts the canary's requests, 5xx answers, compared and
disagreeing examples since it started, and when a budget is broken it writes the state without the
canary (a history entry says why), has every runtime take it at once, and only then logs the event and
counts it (``trainserve_canary_rollbacks_total``): a request that arrives after the count is routed
without the canary. On Kubernetes each replica's launcher judges its own traffic; the state they share is
the file, so the first replica to see a broken canary stops it for all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from service.contract import routing_state, routing_store
from service.contract.routing_state import CANARY, Canary, RoutingConflict, RoutingError, RoutingState

if TYPE_CHECKING:  # prometheus_client picks its multiprocess mode on import: the launcher imports it late
    from prometheus_client.metrics_core import Metric

log = logging.getLogger(__name__)

WATCH_S = 0.5


@dataclass(frozen=True)
class Counts:
    """A canary's figures: requests it answered, of them 5xx, examples compared, of them disagreeing."""

    requests: int = 0
    errors: int = 0
    compared: int = 0
    disagreed: int = 0

    def __sub__(self, other: Counts) -> Counts:
        return Counts(self.requests - other.requests, self.errors - other.errors,
                      self.compared - other.compared, self.disagreed - other.disagreed)


def canary_counts(families: Iterable[Metric], name: str, version: str) -> Counts:
    """The canary role's counters of ``name``/``version``, summed over every process."""
    requests = errors = compared = disagreed = 0
    for family in families:
        for s in family.samples:
            labels = s.labels
            if (labels.get("model"), labels.get("version"), labels.get("role")) != (name, version, CANARY):
                continue
            if s.name == "trainserve_routed_requests_total":
                requests += int(s.value)
                errors += int(s.value) if labels.get("outcome") == "error" else 0
            elif s.name == "trainserve_compared_examples_total":
                compared += int(s.value)
                disagreed += int(s.value) if labels.get("outcome") == "disagree" else 0
    return Counts(requests, errors, compared, disagreed)


@dataclass
class RollbackWatcher:
    """Judges every canary of the repository against its budget (module docstring)."""

    model_dir: Path
    families: Callable[[], Iterable[Metric]]  # the service's metric families, summed over its processes
    apply: Callable[[str], None]  # have every runtime take a model's routing file now
    count: Callable[[str, str, str], None]  # one rollback of (model, version, reason)
    _next: float = 0.0
    _last: dict[tuple[str, str], Counts] = field(default_factory=dict)  # (name, version) -> last read
    _base: dict[tuple[str, str, int], Counts] = field(default_factory=dict)  # canary -> counts at its start
    _failed: set[tuple[str, str, int]] = field(default_factory=set)  # canaries it could not stop

    def check(self, now: float) -> None:
        """Judge the canaries, at most every WATCH_S."""
        if now < self._next:
            return
        self._next = now + WATCH_S
        canaries = self._canaries()
        if not canaries:
            return
        families = list(self.families())
        for name, canary in canaries.items():
            seen = canary_counts(families, name, canary.version)
            key = (name, canary.version, canary.since)
            # Counted from the last figures read before the canary started (its requests since then).
            base = self._base.setdefault(key, self._last.get((name, canary.version), Counts()))
            self._last[(name, canary.version)] = seen
            since = seen - base
            broken = canary.budget.breached(since.requests, since.errors, since.compared, since.disagreed)
            if broken is not None and key not in self._failed:
                self._roll_back(name, canary, *broken)

    def _canaries(self) -> dict[str, Canary]:
        found: dict[str, Canary] = {}
        try:
            names = [p.name for p in self.model_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
        except OSError:
            return found
        for name in names:
            if not routing_store.routing_path(self.model_dir, name).exists():
                continue
            try:
                canary = routing_store.read(self.model_dir, name)[0].canary
            except (RoutingError, OSError):
                continue  # the runtimes log it
            if canary is not None:
                found[name] = canary
        return found

    def _roll_back(self, name: str, canary: Canary, reason: str, why: str) -> None:
        def stop(current: RoutingState) -> RoutingState:
            if current.canary is None or (current.canary.version, current.canary.since) != (canary.version,
                                                                                             canary.since):
                raise RoutingConflict("the canary changed meanwhile")
            return routing_state.stop_canary(current)

        try:
            routing_store.change(self.model_dir, name, stop, "rollback-canary", by="automatic rollback",
                                 reason=why)
        except RoutingConflict:
            return  # stopped or replaced by someone else (another replica, an operator) meanwhile
        except (RoutingError, OSError) as exc:
            self._failed.add((name, canary.version, canary.since))
            log.error("canary %s/%s broke its budget (%s) but cannot be stopped: %s", name, canary.version,
                      why, exc)
            return
        try:
            self.apply(name)
        except Exception as exc:  # a runtime that is restarting reads the file when it starts
            log.warning("canary %s/%s stopped; a runtime did not confirm it (%s)", name, canary.version, exc)
        log.error("canary %s/%s rolled back automatically: %s", name, canary.version, why)
        self.count(name, canary.version, reason)
