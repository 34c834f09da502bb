"""The publishing rule: a run goes into the served repository only when it is at least as good as the
version the service serves by default (the newest one), by the test accuracy their manifests record.

A worse run is kept under its own run folder, where it can be looked at, and published by hand (copy the
folder) or by running again with ``--publish always``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from service.manifest import ManifestError, artifact_dirs, read_manifest

log = logging.getLogger(__name__)


def served_default_accuracy(repository: Path, name: str) -> tuple[str, float] | None:
    """The version a request without one gets (the newest) and its test accuracy; None when there is
    none, or when its manifest records no test accuracy to compare with."""
    if not (repository / name).is_dir():
        return None
    versions = [f for f in artifact_dirs(repository) if f.parent.name == name]
    if not versions:
        return None
    try:
        accuracy = read_manifest(versions[-1]).metrics.get("test_accuracy")
    except (ManifestError, OSError):
        return None
    return (versions[-1].name, float(accuracy)) if isinstance(accuracy, (int, float)) else None


def publish_root(repository: Path, kept: Path, name: str, accuracy: float, policy: str) -> Path:
    """Where the artifact goes: ``repository`` when ``policy`` allows, else ``kept`` (the run's folder)."""
    current = served_default_accuracy(repository, name)
    if policy == "always" or current is None or accuracy >= current[1]:
        return repository
    version, best = current
    log.warning("not published: test accuracy %.2f %% is below the %.2f %% of %s, the version served by "
                "default; the artifact is kept under %s (publish it with --publish always, or copy it "
                "into %s)", 100 * accuracy, 100 * best, repository / name / version, kept, repository)
    return kept
