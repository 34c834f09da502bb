"""Model control: which artifact versions the runtime serves, and loading them without stopping it.

Modes as Triton's: ``poll`` watches the model folder and follows it; ``explicit`` changes what is served
only on a LOAD or UNLOAD request (the repository API); ``none`` keeps what was loaded at start. In every
mode the version policy (``policy.py``) picks the versions of a model to serve out of those on disk that
have not been refused. Loading, verifying and warming up take seconds, so they run on this module's thread,
never on the loop's; the loop gets a ``Change`` to apply between batches. A new version is added before
the versions it replaces are retired, so a request always finds a version to run on; a version that
fails its checks is refused (a log line, a metric) and what already serves keeps serving.

Each model's routing state (``routes.py``, ``service/routing``) is followed in every mode, a few times a
second: the versions it names are kept loaded whatever the policy says (the default, the canary, the
shadow, and the default a rollback goes back to), and its state goes to the loop with the change, for the
catalog. A ROUTE command (the management API, after it wrote the file) takes a model's file at once and
answers once the loop has applied it.

An artifact is untrusted input: whatever reading, verifying, loading or warming it up raises refuses that
version alone, and the scan goes on to the next. A crash in native code cannot be caught: the folder being
loaded is written to a marker file meanwhile; the runtime started after a crash (``start_up``'s
``crashed``) adds what the marker names to a record every runtime of the service reads at start, and
refuses what the record lists.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty, SimpleQueue

import torch

from service.contract.loading import LoadedModel, LoadingError, load_model
from service.contract.manifest import MANIFEST_FILE, ManifestError, artifact_dirs, version_key
from service.handoff import protocol
from service.policy import VersionPolicy
from service.runtime.routes import RoutingFiles
from service.runtime.table import Change

log = logging.getLogger(__name__)

# An artifact folder's identity on disk: the manifest's inode, size and modification time. Export renames
# a finished folder into place, so a new or replaced artifact always has a new manifest file.
Fingerprint = tuple[int, int, int]
# How often the routing files are looked at (a stat each), in every mode: a change made with the CLI
# takes effect within this (the management API's takes effect before it answers).
ROUTING_POLL_S = 0.5


def scan(model_dir: Path) -> dict[str, dict[str, tuple[Path, Fingerprint]]]:
    """Every artifact folder under ``model_dir`` (``artifact_dirs``): name -> version -> (folder, print)."""
    found: dict[str, dict[str, tuple[Path, Fingerprint]]] = {}
    for folder in artifact_dirs(model_dir):
        try:
            st = (folder / MANIFEST_FILE).stat()
        except OSError:  # gone since it was listed
            continue
        print_ = (st.st_ino, st.st_size, st.st_mtime_ns)
        found.setdefault(folder.parent.name, {})[folder.name] = (folder, print_)
    return found


@dataclass
class _Loaded:
    fingerprint: Fingerprint
    folder: Path


@dataclass
class ModelControl:
    """Decides what the runtime serves and loads it (see the module docstring)."""

    model_dir: Path
    mode: str  # poll, explicit or none
    policy: VersionPolicy
    load: Callable[[Path], LoadedModel]  # load, verify and warm up one artifact folder
    poll_interval_s: float = 2.0
    on_refused: Callable[[str, str], None] = lambda name, version: None  # a metric
    loading_marker: Path | None = None  # names the folder being loaded while it is (see the module docstring)
    crash_record: Path | None = None  # the artifacts any runtime of this service crashed on, one per line
    loaded: dict[str, _Loaded] = field(default_factory=dict)  # "name/version" -> what was handed over
    refused: dict[str, tuple[Fingerprint, str]] = field(default_factory=dict)  # folder -> (print, why)
    wanted: set[str] | None = None  # explicit: the names to serve; otherwise every name on disk
    _reported: dict[str, str] = field(default_factory=dict)  # the refusals the loop last heard of
    _submit: Callable[[Change], None] | None = None
    _commands: SimpleQueue[tuple[object, int, str]] = field(default_factory=SimpleQueue)
    _stop: threading.Event = field(default_factory=threading.Event)
    routing: RoutingFiles = field(init=False)

    def __post_init__(self) -> None:
        self.routing = RoutingFiles(self.model_dir)

    def start_up(self, crashed: str | None = None) -> tuple[list[LoadedModel], dict[str, str]]:
        """Load what the policy selects, before serving; LoadingError when nothing could be loaded.
        ``crashed``: the previous runtime died of this signal, so what it was loading is refused."""
        if not self.model_dir.is_dir():
            raise LoadingError(f"TRAINSERVE_MODEL_DIR={self.model_dir} is not a folder")
        self._refuse_what_crashed(crashed)
        self.routing.refresh()
        change = self.reconcile(None)
        if self.mode == "explicit":
            self.wanted = {key.split("/")[0] for key in self.loaded}
        if not change.added:
            refusals = (change.refused or {}).items()
            why = ("; ".join(f"refused {folder}: {reason}" for folder, reason in refusals)
                   or "it holds no <name>/<version>/manifest.json")
            raise LoadingError(f"no loadable model under TRAINSERVE_MODEL_DIR={self.model_dir}: {why}")
        return change.added, change.refused or {}

    def start(self, submit: Callable[[Change], None]) -> threading.Thread:
        """Run the thread: it follows the routing files, and the folder (poll) or the commands (explicit)."""
        self._submit = submit
        thread = threading.Thread(target=self._run, name=f"model-control-{self.mode}", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        """End the thread at its next wake-up."""
        self._stop.set()
        self._commands.put((None, 0, ""))

    def command(self, reply_to: object, kind: int, name: str) -> str | None:
        """A LOAD, UNLOAD or ROUTE request from the loop: queued for the thread (the answer comes in a
        Change), or the reason it is refused now."""
        if kind != protocol.ROUTE and self.mode != "explicit":
            return (f"model control is {self.mode!r}: load and unload need TRAINSERVE_MODEL_CONTROL=explicit"
                    + (" (poll follows the model folder by itself)" if self.mode == "poll" else ""))
        self._commands.put((reply_to, kind, name))
        return None

    # --- the thread ---------------------------------------------------------------------------------------
    def _run(self) -> None:
        assert self._submit is not None
        next_scan = time.monotonic() + self.poll_interval_s
        while not self._stop.is_set():
            wait = min(ROUTING_POLL_S, max(next_scan - time.monotonic(), 0.0)) if self.mode == "poll" \
                else ROUTING_POLL_S
            try:
                reply_to, kind, name = self._commands.get(timeout=wait)
            except Empty:  # time to look again
                reply_to, kind, name = None, 0, ""
            if self._stop.is_set():
                return
            scan_now = self.mode == "poll" and reply_to is None and time.monotonic() >= next_scan
            if scan_now:
                next_scan = time.monotonic() + self.poll_interval_s
            try:
                change = self._handle(kind, name) if reply_to is not None else self._follow(scan_now)
            except Exception as exc:  # a bug or an unreadable folder must not end hot reload
                log.exception("model control failed")
                change = Change(reply=(reply_to, protocol.FAILED, f"model control failed: {exc}")
                                if reply_to is not None else None)
            else:
                if reply_to is not None:
                    change.reply = (reply_to, *self._outcome(kind, name))
            if change:
                self._submit(change)

    def _follow(self, scan_now: bool) -> Change:
        """The routing files that changed, and (poll, when its interval has passed) the folder."""
        routed = self.routing.refresh()
        if scan_now:
            change = self.reconcile(None)
        elif routed and self.mode != "none":
            change = self.reconcile(routed)
        else:
            change = Change()
        if routed:
            change.routing = self.routing.catalog()
        return change

    def _handle(self, kind: int, name: str) -> Change:
        if kind == protocol.ROUTE:
            routed = self.routing.refresh({name})
            change = self.reconcile({name}) if self.mode != "none" else Change()
            if routed:
                change.routing = self.routing.catalog()
            return change
        assert self.wanted is not None
        if kind == protocol.LOAD:
            self.wanted.add(name)
        else:
            self.wanted.discard(name)
        return self.reconcile({name})

    def _outcome(self, kind: int, name: str) -> tuple[int, str]:
        serving = sorted((k.split("/")[1] for k in self.loaded if k.split("/")[0] == name), key=version_key)
        if kind == protocol.ROUTE:
            state = self.routing.states.get(name)
            return protocol.OK, (f"routing of {name} at revision {state.revision if state else 0}; serving "
                                 f"version(s) {', '.join(serving) or 'none'}")
        if kind == protocol.UNLOAD:
            return protocol.OK, f"unloaded {name}"
        if serving:
            return protocol.OK, f"serving {name} version(s) {', '.join(serving)}"
        reasons = [why for folder, (_, why) in self.refused.items() if Path(folder).parent.name == name]
        why = "; ".join(reasons) or "none found"
        return protocol.BAD_REQUEST, f"no version of {name!r} could be loaded: {why}"

    # --- deciding ----------------------------------------------------------------------------------------
    def reconcile(self, names: set[str] | None) -> Change:
        """Load what the policy selects and is not loaded, retire what it no longer selects: for ``names``
        (None: every model on disk and every model served)."""
        try:
            disk = scan(self.model_dir)
        except OSError as exc:
            log.warning("cannot read TRAINSERVE_MODEL_DIR=%s (%s): serving what is loaded",
                        self.model_dir, exc)
            return Change()
        known = {key.split("/")[0] for key in self.loaded} | set(disk)
        change = Change()
        for name in sorted(known if names is None else names):
            if self.wanted is not None and name not in self.wanted:
                change.retired += self._retire(name, keep=set())
                continue
            versions = disk.get(name, {})
            change.added += self._load_selected(name, versions)
            change.retired += self._retire(name, self._select(name, self._candidates(name, versions)))
        current = {str(folder) for found in disk.values() for folder, _ in found.values()}
        self.refused = {f: r for f, r in self.refused.items() if f in current}  # folders gone: forgotten
        refused = {f: why for f, (_, why) in self.refused.items()}
        change.refused = refused if change or refused != self._reported else None
        self._reported = refused
        return change

    def _select(self, name: str, candidates: set[str]) -> set[str]:
        """What the policy selects, and the versions the model's routing names (those it may have)."""
        return self.policy.select(name, candidates) | (self.routing.pins(name) & candidates)

    def _served(self, name: str) -> set[str]:
        return {k.split("/")[1] for k in self.loaded if k.split("/")[0] == name}

    def _candidates(self, name: str, versions: dict[str, tuple[Path, Fingerprint]]) -> set[str]:
        """Versions the policy may pick: on disk and not refused as they are now, or already serving (a
        replaced artifact that fails its checks leaves the loaded one serving)."""
        served = self._served(name)
        return {v for v, (folder, print_) in versions.items()
                if v in served or self.refused.get(str(folder), (None,))[0] != print_}

    def _load_selected(self, name: str, versions: dict[str, tuple[Path, Fingerprint]]) -> list[LoadedModel]:
        added: list[LoadedModel] = []
        while True:  # a refused version leaves the selection: the policy then picks the next one
            selected = self._select(name, self._candidates(name, versions))
            todo = [v for v in sorted(selected, key=version_key)
                    if (loaded := self.loaded.get(f"{name}/{v}")) is None
                    or (loaded.fingerprint != versions[v][1]
                        and self.refused.get(str(versions[v][0]), (None,))[0] != versions[v][1])]
            if not todo:
                return added
            for version in todo:
                folder, print_ = versions[version]
                try:
                    model = self._load_marked(folder, print_)
                except Exception as exc:  # untrusted input: whatever loading it raises refuses this version
                    reason = str(exc) if isinstance(exc, ManifestError) else f"{type(exc).__name__}: {exc}"
                    self._refuse(name, version, folder, print_, reason)
                    continue
                self.refused.pop(str(folder), None)
                self.loaded[model.key] = _Loaded(print_, folder)
                added.append(model)

    def _refuse(self, name: str, version: str, folder: Path, print_: Fingerprint, reason: str) -> None:
        self.refused[str(folder)] = (print_, reason)
        log.error("refused artifact %s: %s", folder, reason)
        self.on_refused(name, version)

    def _load_marked(self, folder: Path, print_: Fingerprint) -> LoadedModel:
        """``load``, with the folder named in the loading marker while it runs."""
        if self.loading_marker is None:
            return self.load(folder)
        self.loading_marker.write_text(json.dumps({"folder": str(folder), "fingerprint": print_}))
        try:
            return self.load(folder)
        finally:
            self.loading_marker.unlink(missing_ok=True)

    def _refuse_what_crashed(self, signal_name: str | None) -> None:
        """Refuse every artifact a runtime of this service crashed on: the one the previous runtime was
        loading when it died of ``signal_name`` (its marker), and those recorded before (every runtime of
        the service shares the record, so none crashes on an artifact another already crashed on)."""
        if self.loading_marker is None or self.crash_record is None:
            return
        try:
            marked = json.loads(self.loading_marker.read_text()) if signal_name else None
        except (OSError, ValueError):
            marked = None  # it was not loading, or the crash cut the marker short
        self.loading_marker.unlink(missing_ok=True)
        if isinstance(marked, dict):
            with self.crash_record.open("a") as fh:  # one short line per append: runtimes share the file
                fh.write(json.dumps(marked | {"signal": signal_name}) + "\n")
        try:
            lines = self.crash_record.read_text().splitlines()
        except OSError:
            return
        for line in lines:
            try:
                entry = json.loads(line)
                folder, print_ = Path(entry["folder"]), tuple(entry["fingerprint"])
            except (ValueError, KeyError, TypeError):
                continue
            self._refuse(folder.parent.name, folder.name, folder, print_,
                         f"a model runtime died of {entry.get('signal')} while loading it")

    def _retire(self, name: str, keep: set[str]) -> list[str]:
        gone = [key for key in self.loaded if key.split("/")[0] == name and key.split("/")[1] not in keep]
        for key in gone:
            del self.loaded[key]
        return gone


def loader(device: torch.device, half: bool, warmup_batch: int,
           model_format: str) -> Callable[[Path], LoadedModel]:
    """``load_model`` with this runtime's settings."""
    return lambda folder: load_model(folder, device, half, warmup_batch, model_format)
