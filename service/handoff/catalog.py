"""What a runtime serves, as the HTTP side sees it: the models of its catalog message (no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from service.contract.manifest import Manifest
from service.contract.routing_state import RoutingState
from service.handoff.versions import ModelVersions


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
    generation: tuple[Any, ...] = (0, 0.0, 0)  # the runtime's pid, start time and catalog epoch
    # Each model's routing state as the runtime last read it (service/routing): none written, no entry.
    routing: dict[str, RoutingState] = field(default_factory=dict)

    @property
    def epoch(self) -> int:
        """The catalog's epoch (it grows with every change of what the runtime serves)."""
        return int(self.generation[-1])

    @classmethod
    def from_message(cls, data: dict[str, Any]) -> Catalog:
        """Build from a runtime's catalog message."""
        catalog = cls(refused=dict(data["refused"]), max_batch_size=int(data["max_batch_size"]),
                      generation=(int(data["pid"]), float(data["started"]), int(data["epoch"])))
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
                     generation=tuple(c.generation for c in catalogs))
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
