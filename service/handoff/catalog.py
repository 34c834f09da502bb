"""What a runtime serves, as the HTTP side sees it: the models of its catalog message (no torch).

Invariants the workers rely on (``service/runtime/table.py`` keeps the runtime's side of them):

- A catalog comes from one runtime process and one moment: its ``Generation`` (the process's pid and start
  time, and the catalog's epoch). The epoch grows with every change of what that runtime serves; a
  restarted runtime is another process, so its epochs start again and only ``same_runtime`` compares them.
- ``position`` maps every listed version *and* every retiring one to its index in the runtime's model
  table. Indices are never reused, so a request resolved against an older catalog of the same runtime still
  reaches the version it resolved; the lookup (``get``) finds only listed versions, so new requests never
  resolve a retiring one.
- A merged catalog (several runtimes) lists what any of them serves, with one generation per runtime; a
  request goes only to a runtime whose own catalog lists its model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from service.contract.manifest import Manifest
from service.contract.routing_state import RoutingState
from service.handoff.versions import ModelVersions


@dataclass(frozen=True)
class Generation:
    """Which runtime process wrote a catalog, and the catalog's epoch in that process."""

    pid: int
    started: float  # the process's start time: a pid alone may be reused by a later process
    epoch: int

    def same_runtime(self, other: Generation) -> bool:
        """Whether both come from the same runtime process (so their epochs compare)."""
        return (self.pid, self.started) == (other.pid, other.started)


@dataclass(frozen=True)
class ServedModel:
    """A model a runtime serves, as the HTTP side sees it: its manifest and where it runs."""

    manifest: Manifest
    device: str
    load_seconds: float
    format: str = "torchscript"  # the file the runtime serves: torchscript, exported or aoti

    @property
    def key(self) -> str:
        """``name/version``."""
        return f"{self.manifest.name}/{self.manifest.version}"


@dataclass
class Catalog(ModelVersions[ServedModel]):
    """What a runtime serves, as its greeting described it (the lookup is ``ModelVersions``')."""

    # key -> the runtime's index, for the listed models and those retiring (which a request resolved just
    # before a swap may still address; the lookup, ModelVersions', finds only the listed ones).
    position: dict[str, int] = field(default_factory=dict)
    max_batch_size: int = 1
    # One per runtime whose catalog this is: one for a runtime's own catalog, several for a merged one.
    generations: tuple[Generation, ...] = ()
    # Each model's routing state as the runtime last read it (service/routing): none written, no entry.
    routing: dict[str, RoutingState] = field(default_factory=dict)

    @property
    def generation(self) -> Generation:
        """The generation of a runtime's own catalog (a merged one has several: ``generations``)."""
        if len(self.generations) != 1:
            raise ValueError(f"a catalog of {len(self.generations)} runtimes has no single generation")
        return self.generations[0]

    @property
    def epoch(self) -> int:
        """A runtime's catalog's epoch (it grows with every change of what the runtime serves)."""
        return self.generation.epoch

    @classmethod
    def from_message(cls, data: dict[str, Any]) -> Catalog:
        """Build from a runtime's catalog message."""
        catalog = cls(refused=dict(data["refused"]), max_batch_size=int(data["max_batch_size"]),
                      generations=(Generation(int(data["pid"]), float(data["started"]), int(data["epoch"])),))
        catalog.position.update({key: int(index) for key, index in data["retiring"].items()})
        catalog.routing.update({name: RoutingState.from_dict(state)
                                for name, state in data.get("routing", {}).items()})
        for entry in data["models"]:
            model = ServedModel(Manifest.from_dict(entry["manifest"]), entry["device"], entry["load_seconds"],
                                entry["format"])
            catalog.add(model)
            catalog.position[model.key] = int(entry["index"])
        return catalog

    @classmethod
    def merge(cls, catalogs: list[Catalog]) -> Catalog:
        """What several runtimes serve together: a request goes to a runtime that serves its model."""
        merged = cls(max_batch_size=min(c.max_batch_size for c in catalogs),
                     generations=tuple(g for c in catalogs for g in c.generations))
        for catalog in catalogs:
            merged.refused.update(catalog.refused)
            for name, state in catalog.routing.items():  # each runtime reads the file: the newest wins
                if name not in merged.routing or state.revision > merged.routing[name].revision:
                    merged.routing[name] = state
            for model in catalog:
                if model.key not in merged.position:
                    merged.add(model)
                    merged.position[model.key] = catalog.position[model.key]
        return merged

    @classmethod
    def combined(cls, catalogs: list[Catalog], previous: Catalog | None) -> Catalog:
        """What the runtimes whose catalogs these are serve: the one catalog itself, ``previous`` while it
        was merged from these very catalogs, else a new merge."""
        if len(catalogs) == 1:
            return catalogs[0]
        if previous is not None and previous.generations == tuple(g for c in catalogs for g in c.generations):
            return previous
        return cls.merge(catalogs)

    def default_version(self, name: str) -> str:
        """The routing state's default when it is served, else the newest served version."""
        state = self.routing.get(name)
        if state is not None and state.default is not None and state.default in self.models[name]:
            return state.default
        return super().default_version(name)

    def serves(self, key: str) -> bool:
        """Whether ``name/version`` is listed (not merely retiring)."""
        name, _, version = key.partition("/")
        return version in self.models.get(name, {})
