"""The routing files as a model runtime follows them: each model's ``routing.json`` (service/routing),
read again whenever its ``stat`` changes. The model control keeps the versions a state names loaded (its
pins) and hands the states to the loop, which puts them in the catalog every worker reads.

A file that cannot be read or parsed keeps the last state read from it (a log line says why): an
operator's typo must not reroute the traffic.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.contract import routing_store
from service.contract.routing_state import RoutingError, RoutingState

log = logging.getLogger(__name__)

_Print = tuple[int, int, int]


@dataclass
class RoutingFiles:
    """Every model's routing state under ``model_dir``, as last read."""

    model_dir: Path
    states: dict[str, RoutingState] = field(default_factory=dict)
    _prints: dict[str, _Print | None] = field(default_factory=dict)

    def refresh(self, names: set[str] | None = None) -> set[str]:
        """Read the files whose stat changed (of ``names``, or every model folder's); the models whose
        routing changed."""
        if names is None:
            try:
                names = {p.name for p in self.model_dir.iterdir()
                         if p.is_dir() and not p.name.startswith(".")}
            except OSError:
                return set()
            names |= set(self._prints)
        changed = set()
        for name in sorted(names):
            path = routing_store.routing_path(self.model_dir, name)
            try:
                st = path.stat()
                print_: _Print | None = (st.st_ino, st.st_size, st.st_mtime_ns)
            except OSError:
                print_ = None
            if print_ == self._prints.get(name, None) and name in self._prints:
                continue
            self._prints[name] = print_
            if self._read(name, print_ is not None):
                changed.add(name)
        return changed

    def _read(self, name: str, exists: bool) -> bool:
        """Take the file's state; whether it routes differently from the one held."""
        try:
            state = routing_store.read(self.model_dir, name)[0] if exists else RoutingState()
        except (RoutingError, OSError) as exc:
            log.error("routing state of %s not taken (%s): keeping the last one read", name, exc)
            return False
        old = self.states.get(name, RoutingState())
        if state == RoutingState():
            self.states.pop(name, None)
        else:
            self.states[name] = state
        if state != old:
            log.info("routing of %s at revision %d: default %s, canary %s, shadow %s", name, state.revision,
                     state.default or "newest", _candidate(state.canary), _candidate(state.shadow))
        return state != old

    def pins(self, name: str) -> set[str]:
        """The versions of ``name`` its routing keeps loaded."""
        state = self.states.get(name)
        return state.pins() if state is not None else set()

    def catalog(self) -> dict[str, dict[str, Any]]:
        """The states as the catalog carries them."""
        return {name: state.to_dict() for name, state in self.states.items()}


def _candidate(candidate: Any) -> str:
    return f"{candidate.version} at {candidate.percent:g} %" if candidate is not None else "none"
