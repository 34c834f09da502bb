"""Models by name and version, the newest version each name's default (the catalog's routing may name
another): the runtime's loaded versions and the workers' catalog share this lookup."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from service.contract.manifest import Manifest, version_key
from service.errors import ModelNotFound


class _HasManifest(Protocol):
    @property
    def manifest(self) -> Manifest: ...


M = TypeVar("M", bound=_HasManifest)


@dataclass
class ModelVersions(Generic[M]):
    """Every model, by name and version; ``refused`` says which artifact folders were not loaded, and why."""

    models: dict[str, dict[str, M]] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)  # folder -> why

    def add(self, model: M) -> None:
        """Register a model."""
        self.models.setdefault(model.manifest.name, {})[model.manifest.version] = model

    def get(self, name: str, version: str | None = None) -> M:
        """The named model (newest version unless one is given); raise ModelNotFound."""
        versions = self.models.get(name)
        if not versions:
            raise ModelNotFound(f"model {name!r} is not served here")
        if version is None:
            version = self.default_version(name)
        if version not in versions:
            known = ", ".join(sorted(versions, key=version_key))
            raise ModelNotFound(f"model {name!r} has no version {version!r} (it has {known})")
        return versions[version]

    def default_version(self, name: str) -> str:
        """The version a request that names none gets: the newest (the catalog adds routing)."""
        return max(self.models[name], key=version_key)

    def __iter__(self) -> Iterator[M]:
        for name in sorted(self.models):
            versions = self.models[name]
            yield from (versions[v] for v in sorted(versions, key=version_key))

    def __len__(self) -> int:
        return sum(len(v) for v in self.models.values())
