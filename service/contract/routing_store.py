"""The routing state on disk: ``<model_dir>/<name>/routing.json``, beside the model's version folders, so
that it lives where the versions live (the models volume, on Kubernetes) and survives restarts.

Every writer (the management API in any HTTP worker, the CLI, training's ``--publish canary:P``, the
automatic rollback) reads, changes and writes it under an exclusive lock on ``.routing.lock`` in the same
folder, and writes it whole into a temporary file that is renamed over the old one: a reader (every model
runtime polls it) sees the old state or the new one, never half of one. The file holds the state and the
history of its changes, newest last.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from service.contract.manifest import MANIFEST_FILE, version_key
from service.contract.routing_state import VERSION, RoutingConflict, RoutingError, RoutingState

ROUTING_FILE = "routing.json"
LOCK_FILE = ".routing.lock"
MAX_HISTORY = 200  # changes kept in the file; older ones are dropped


class StoreError(OSError):
    """The routing file cannot be read or written (a read-only volume, a missing model folder)."""


def routing_path(model_dir: Path, name: str) -> Path:
    """Where a model's routing state lives."""
    return model_dir / name / ROUTING_FILE


def versions_on_disk(model_dir: Path, name: str) -> list[str]:
    """The model's artifact versions (folders with a manifest), oldest first."""
    folder = model_dir / name
    if not folder.is_dir():
        return []
    found = [p.name for p in folder.iterdir()
             if VERSION.match(p.name) and p.is_dir() and (p / MANIFEST_FILE).exists()]
    return sorted(found, key=version_key)


def newest_other(versions: list[str], name: str, candidate: str) -> str:
    """The newest of ``versions`` other than ``candidate``: the default to pin when a candidate starts and
    none is set (a bare name gets the newest version, which a just-published candidate would be)."""
    others = [v for v in sorted(versions, key=version_key) if v != candidate]
    if not others:
        raise RoutingConflict(f"model {name!r} has no version other than {candidate} to be the default")
    return others[-1]


def read(model_dir: Path, name: str) -> tuple[RoutingState, list[dict[str, Any]]]:
    """The state and its history; an empty state when none was written. RoutingError when the file is
    not a routing state, StoreError when it cannot be read."""
    path = routing_path(model_dir, name)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return RoutingState(), []
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = json.loads(raw)
    except ValueError:
        raise RoutingError(f"{path} is not JSON") from None
    history = data.get("history", []) if isinstance(data, dict) else []
    return RoutingState.from_dict(data), history if isinstance(history, list) else []


def change(model_dir: Path, name: str, step: Callable[[RoutingState], RoutingState], action: str, by: str,
           reason: str = "") -> RoutingState:
    """Apply ``step`` to the state under the lock and write the result with a history entry; the new state
    (the old one, unwritten, when ``step`` changes nothing). ``step`` raises to refuse the change."""
    with _locked(model_dir / name):
        old, history = read(model_dir, name)
        new = step(old)
        if new.same_routes(old) and new.previous == old.previous:
            return old
        revision = old.revision + 1
        canary = new.canary
        if canary is not None and (old.canary is None or old.canary.version != canary.version):
            canary = type(canary)(canary.version, canary.percent, canary.budget, since=revision)
        new = type(new)(new.default, canary, new.shadow, new.previous, revision)
        entry = {"revision": revision, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "action": action, "by": by} | ({"reason": reason} if reason else {}) | _summary(new)
        _write(routing_path(model_dir, name), new.to_dict() | {"history": [*history, entry][-MAX_HISTORY:]})
        return new


def _summary(state: RoutingState) -> dict[str, Any]:
    return {"default": state.default,
            "canary": {"version": state.canary.version, "percent": state.canary.percent} if state.canary
            else None,
            "shadow": state.shadow.to_dict() if state.shadow else None}


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    if not folder.is_dir():
        raise StoreError(f"{folder} is not a model folder")
    try:
        fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise StoreError(f"cannot write the routing state in {folder}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _write(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` whole beside ``path`` and rename it into place (then make the rename durable)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("w") as fh:
            json.dump(data, fh, indent=1)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temporary, path)
        folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise StoreError(f"cannot write {path}: {exc.strerror}") from None
