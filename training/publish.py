"""The publishing rule: a run goes into the served repository only when it is at least as good as the
version the service serves by default (the routing state's default, else the newest), by the test
accuracy their manifests record (``--tolerance`` points below it allowed) and, for a run that trained on
corrections (``--extra-data``), by the accuracy of both on the corrections the run held out.

A worse run is kept under its own run folder, where it can be looked at, and published by hand (copy the
folder) or by running again with ``--publish always``. ``--publish canary:P`` publishes it whatever its
accuracy, as a canary that answers P % of the requests the default gets (``service/routing``): the
default is pinned first, so that the new version, the newest, never becomes the default by being
published; the service judges the canary against its budget and rolls it back by itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from service.contract import routing_state, routing_store
from service.contract.manifest import ManifestError, read_manifest
from training.config import canary_percent

log = logging.getLogger(__name__)


def served_default(repository: Path, name: str) -> str | None:
    """The version a request without one gets: the routing state's default, else the newest."""
    versions = routing_store.versions_on_disk(repository, name)
    if not versions:
        return None
    try:
        pinned = routing_store.read(repository, name)[0].default
    except (ValueError, OSError):
        pinned = None
    return pinned if pinned in versions else versions[-1]


def served_default_accuracy(repository: Path, name: str) -> tuple[str, float] | None:
    """The version a request without one gets and its test accuracy; None when there is none, or when its
    manifest records no test accuracy to compare with."""
    version = served_default(repository, name)
    if version is None:
        return None
    try:
        accuracy = read_manifest(repository / name / version).metrics.get("test_accuracy")
    except (ManifestError, OSError):
        return None
    return (version, float(accuracy)) if isinstance(accuracy, (int, float)) else None


@dataclass(frozen=True)
class HeldOut:
    """The accuracy of a run and of the version served by default on the corrections the run held out."""

    examples: int
    accuracy: float
    default_accuracy: float
    default_version: str


def publish_root(repository: Path, kept: Path, name: str, accuracy: float, policy: str,
                 tolerance: float = 0.0, held_out: HeldOut | None = None) -> Path:
    """Where the artifact goes: ``repository`` when ``policy`` allows, else ``kept`` (the run's folder)."""
    current = served_default_accuracy(repository, name)
    if policy != "better" or current is None:
        return repository
    version, best = current
    worse = []
    if round(accuracy, 6) < round(best - tolerance / 100, 6):
        worse.append(f"test accuracy {100 * accuracy:.2f} % is below the {100 * best:.2f} % of "
                     f"{repository / name / version}, the version served by default"
                     + (f", by more than {tolerance:g} points (--tolerance)" if tolerance else ""))
    if held_out is not None and held_out.accuracy < held_out.default_accuracy:
        worse.append(f"on the {held_out.examples} held-out corrections its accuracy "
                     f"{100 * held_out.accuracy:.1f} % is below the {100 * held_out.default_accuracy:.1f} % "
                     f"of version {held_out.default_version}")
    if not worse:
        return repository
    log.warning("not published: %s; the artifact is kept under %s (publish it with --publish always or "
                "canary:P, or copy it into %s)", "; ".join(worse), kept, repository)
    return kept


def pin_default(repository: Path, name: str, policy: str) -> str | None:
    """Before a canary is exported: make the version served by default now the routing's default, so
    that the new version does not take over by being the newest; that version (None: nothing served yet,
    or not a canary)."""
    current = served_default(repository, name)
    if canary_percent(policy) is None:
        return None
    if current is None:
        log.info("the first version of %s: published as its default, not as a canary", name)
        return None
    routing_store.change(repository, name, lambda s: routing_state.pin_default(s, current), "pin-default",
                         by="training")
    return current


def start_canary(repository: Path, name: str, version: str, policy: str) -> None:
    """Once the artifact is in place: start it as the canary ``policy`` (canary:P) names."""
    percent = canary_percent(policy)
    assert percent is not None
    current = served_default(repository, name)
    assert current is not None
    routing_store.change(repository, name,
                         lambda s: routing_state.start_canary(s, version, percent, None, current),
                         "canary", by="training")
    log.info("published %s/%s as a canary answering %g %% of the requests to %s (default %s)", name, version,
             percent, name, routing_store.read(repository, name)[0].default)
