"""A Flask worker's side of the runtime, for request threads: which models are served, and inference
through shared memory.

No torch here: HTTP workers hold no model. A request thread takes a free connection (or opens one),
copies its rows into the first slot of the connection's arena, sends a group of one segment and blocks in
``recv`` with the GIL released until the runtime answers; the logits are read from the slot. Requests
larger than the runtime's batch size go through the slot in chunks. (The event-loop side, which groups
every request of a loop turn, is ``service/handoff/grouping.py``; both speak ``protocol.py``.)

Pooled connections and hot reload: each connection carries the catalog of its greeting. The runtime's
state page (one per runtime, adopted from the first connection to each runtime process) shows the epoch
now; a pooled connection whose catalog is older is closed when it is next taken, and a new one brings the
new catalog. A connection that cannot be sent on (its runtime was restarted) makes the whole pool of that
runtime stale. A request never waits for a newer catalog: the one it resolved against still addresses its
version, retiring or not (``catalog.py``).
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from service.errors import (
    DeadlineExceeded,
    InferenceFailed,
    InvalidInput,
    NotReady,
    QueueFull,
    RuntimeUnavailable,
    ServiceError,
)
from service.handoff import protocol
from service.handoff.catalog import Catalog, ServedModel

log = logging.getLogger(__name__)

_ERRORS: dict[int, type[ServiceError]] = {
    protocol.FAILED: InferenceFailed, protocol.DEADLINE: DeadlineExceeded, protocol.QUEUE_FULL: QueueFull,
    protocol.NOT_READY: NotReady, protocol.BAD_REQUEST: InvalidInput}


_TIMEVAL = struct.Struct("@ll")  # struct timeval, for SO_RCVTIMEO
T = TypeVar("T")


def error_for(status: int, text: str) -> ServiceError:
    """The ServiceError a runtime's refusal stands for."""
    return _ERRORS.get(status, InferenceFailed)(text or "the model runtime refused the request")


def _refusal(message: bytes) -> tuple[int, int, str]:
    """(status, 0, text) of a reply: the answer to a control message or a refused message."""
    _, status, _, _ = protocol.HEADER.unpack_from(message)
    return status, 0, message[protocol.HEADER.size:].decode(errors="replace")


class _Stale(ConnectionError):
    """The request could not be sent: the runtime this connection went to is gone."""


class _Connection:
    """A socket to one runtime and the arena it sent (this client uses its first slot)."""

    def __init__(self, path: Path, timeout_s: float) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.sock.settimeout(timeout_s)
            self.sock.connect(str(path))
            message, fd, state_fd = protocol.receive_catalog(self.sock)
            # From now on a blocking socket with a kernel receive timeout: one recv() per answer, where a
            # Python-level timeout would poll() first (two system calls, two GIL hand-overs).
            self.sock.settimeout(None)
        except BaseException:
            self.sock.close()
            raise
        self.catalog = Catalog.from_message(message)
        self.arena = protocol.Arena(fd, protocol.layout_of(message))
        self.state_fd: int | None = state_fd  # the runtime's state page: the client keeps one per runtime

    def infer(self, index: int, dtype: int, rows: int, deadline: float) -> tuple[int, int, str]:
        """Run the ``rows`` in slot 0 as a group of one segment; wait until ``deadline``: (status, rows,
        text)."""
        message = self._call(protocol.group([(0, index, 1, dtype, rows, deadline)]), deadline)
        try:
            (_, status, rows, text), = protocol.read_answers(message)
        except ValueError:  # a refusal of the whole message, or not one result
            return _refusal(message)
        return status, rows, text

    def explain(self, message: bytes, deadline: float) -> tuple[int, int, str]:
        """Send an EXPLAIN for the rows in slot 0 and wait until ``deadline``: (status, rows, text)."""
        answer = self._call(message, deadline)
        try:
            (_, status, rows, text), = protocol.read_answers(answer)
        except ValueError:
            return _refusal(answer)
        return status, rows, text

    def control(self, kind: int, name: str, deadline: float) -> tuple[int, str]:
        """A PING, LOAD or UNLOAD: (status, text)."""
        status, _, text = _refusal(self._call(protocol.control(kind, name), deadline))
        return status, text

    def _call(self, message: bytes, deadline: float) -> bytes:
        try:
            self.sock.send(message)
        except OSError as exc:
            raise _Stale(str(exc)) from exc
        wait = max(deadline - time.monotonic(), 0.001)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                             _TIMEVAL.pack(int(wait), int(wait % 1 * 1e6)))
        try:
            answer = self.sock.recv(protocol.MAX_ANSWER_BYTES)
        except BlockingIOError:  # SO_RCVTIMEO ran out
            raise TimeoutError("no answer before the deadline") from None
        if len(answer) < protocol.HEADER.size:
            raise ConnectionError("the model runtime closed the connection")
        return answer

    @property
    def closed(self) -> bool:
        return self.sock.fileno() < 0

    def close(self) -> None:
        self.sock.close()
        self.arena.close()
        if self.state_fd is not None:
            os.close(self.state_fd)
            self.state_fd = None


@dataclass
class _View:
    """What this worker knows of one runtime: its newest catalog and its state page (the epoch now)."""

    catalog: Catalog | None = None
    state: protocol.State | None = None

    @property
    def current(self) -> bool:
        """Whether the catalog is the runtime's newest (its state page shows no later epoch)."""
        return self.catalog is not None and (self.state is None or self.state.epoch == self.catalog.epoch)


class RuntimeClient:
    """Connections to every runtime of this service (one per device), shared by a worker's threads."""

    def __init__(self, paths: list[Path], connect_timeout_s: float = 2.0) -> None:
        if not paths:
            raise ValueError("no model runtime socket given")
        self.paths = paths
        self.connect_timeout_s = connect_timeout_s
        self._free: list[list[_Connection]] = [[] for _ in paths]
        self._lock = threading.Lock()
        self._turn = 0
        self._views = [_View() for _ in paths]
        self._merged: Catalog | None = None

    def catalog(self) -> Catalog:
        """The models served: each runtime's newest catalog (a runtime whose state page shows a newer epoch
        is asked for it, by a new connection), merged when there are several."""
        for runtime, view in enumerate(self._views):
            if not view.current:
                try:
                    self._release(runtime, self._acquire(runtime))
                except RuntimeUnavailable:
                    if runtime == len(self._views) - 1 and not any(v.catalog for v in self._views):
                        raise
        catalogs = [v.catalog for v in self._views if v.catalog is not None]
        self._merged = Catalog.combined(catalogs, self._merged)
        return self._merged

    def infer(self, model: ServedModel, inputs: np.ndarray, deadline: float) -> np.ndarray:
        """Logits [N, classes] for ``inputs`` [N, *shape] (uint8 or float32), by ``deadline`` (monotonic).

        With several runtimes, a request whose runtime is lost (crashed, restarting) goes to the next one:
        inference has no side effects, so running it again elsewhere is safe even if the lost runtime had
        seen it."""
        return self._on_some_runtime(model, deadline, lambda conn: self._infer(conn, model, inputs, deadline))

    def explain(self, model: ServedModel, inputs: np.ndarray, targets: list[int], method: str, steps: int,
                deadline: float) -> tuple[np.ndarray, np.ndarray]:
        """Attributions [N, *shape] and logits [N, classes] of ``inputs`` [N, *shape], row i for class
        ``targets[i]`` (-1: the predicted class), by ``method`` (protocol.METHODS) with ``steps``."""
        return self._on_some_runtime(model, deadline, lambda conn: self._explain(
            conn, model, inputs, targets, protocol.METHODS.index(method), steps, deadline))

    def _on_some_runtime(self, model: ServedModel, deadline: float, work: Callable[[_Connection], T]) -> T:
        first = self._next_runtime()
        order = [first, *(r for r in range(len(self.paths)) if r != first)]
        # With several runtimes each follows the model folder on its own: one may serve a new version
        # a moment before another; a request goes only to runtimes whose catalog has its model.
        serving = [r for r in order if (c := self._views[r].catalog) is None or model.key in c.position]
        failure: ServiceError = NotReady(f"model {model.key} is no longer loaded by any model runtime")
        for runtime in serving:
            try:
                return self._work_on(runtime, model, work, deadline)
            except (RuntimeUnavailable, NotReady) as exc:
                failure = exc
                if time.monotonic() >= deadline:
                    break
        raise failure

    def _work_on(self, runtime: int, model: ServedModel, work: Callable[[_Connection], T],
                 deadline: float) -> T:
        conn = self._acquire(runtime, deadline)
        try:
            try:
                return work(conn)
            except _Stale:
                # A pooled connection to a runtime that has since been restarted: every pooled one is
                # stale too. Nothing reached the model, so the request goes to the new runtime once.
                conn.close()
                self._flush(runtime)
                conn = self._acquire(runtime, deadline)
                return work(conn)
        except TimeoutError:
            conn.close()  # an answer may still come: this slot cannot be reused
            raise DeadlineExceeded(f"model {model.key} did not answer before the request deadline") from None
        except OSError as exc:
            conn.close()
            self._flush(runtime)
            log.warning("lost the model runtime at %s: %s", self.paths[runtime], exc)
            raise RuntimeUnavailable("the model runtime is not available (restarting); "
                                     "retry shortly") from None
        finally:
            if not conn.closed:
                self._release(runtime, conn)

    def _infer(self, conn: _Connection, model: ServedModel, inputs: np.ndarray,
               deadline: float) -> np.ndarray:
        index = conn.catalog.position.get(model.key)
        if index is None:
            raise NotReady(f"model {model.key} is no longer loaded by the model runtime")
        dtype = protocol.DTYPES.index(inputs.dtype)
        step = conn.catalog.max_batch_size
        classes = model.manifest.num_outputs
        out = np.empty((len(inputs), classes), dtype=np.float32)
        for start in range(0, len(inputs), step):
            chunk = inputs[start:start + step]
            conn.arena.input(0, inputs.dtype, chunk.shape)[:] = chunk
            status, rows, message = conn.infer(index, dtype, len(chunk), deadline)
            if status != protocol.OK:
                raise error_for(status, message)
            if rows != len(chunk):
                raise InferenceFailed(f"the model runtime answered {rows} rows for {len(chunk)}")
            out[start:start + rows] = conn.arena.output(0, (rows, classes))
        return out

    def _explain(self, conn: _Connection, model: ServedModel, inputs: np.ndarray, targets: list[int],
                 method: int, steps: int, deadline: float) -> tuple[np.ndarray, np.ndarray]:
        index = conn.catalog.position.get(model.key)
        if index is None:
            raise NotReady(f"model {model.key} is no longer loaded by the model runtime")
        conn.arena.input(0, inputs.dtype, inputs.shape)[:] = inputs
        wanted = [protocol.PREDICTED if t < 0 else t for t in targets]
        dtype = protocol.DTYPES.index(inputs.dtype)
        message = protocol.explain(0, index, dtype, method, steps, deadline, wanted)
        status, rows, text = conn.explain(message, deadline)
        if status != protocol.OK:
            raise error_for(status, text)
        if rows != len(inputs):
            raise InferenceFailed(f"the model runtime answered {rows} rows for {len(inputs)}")
        attributions = conn.arena.input(0, np.dtype(np.float32), inputs.shape).copy()
        return attributions, conn.arena.output(0, (rows, model.manifest.num_outputs)).copy()

    def control(self, kind: int, name: str, deadline: float) -> list[str]:
        """LOAD or UNLOAD ``name`` on every runtime (model control "explicit"); their answers, or the first
        refusal raised as its ServiceError once every runtime has answered."""
        answers, failure = [], None
        for runtime in range(len(self.paths)):
            conn = self._acquire(runtime)
            try:
                status, message = conn.control(kind, name, deadline)
            except TimeoutError:
                conn.close()
                raise DeadlineExceeded(f"the model runtime did not finish with {name!r} in time; it goes "
                                       "on, and the repository index shows the outcome") from None
            except OSError as exc:
                conn.close()
                raise RuntimeUnavailable(f"lost the model runtime: {exc}") from None
            self._release(runtime, conn)
            answers.append(message)
            if status != protocol.OK and failure is None:
                failure = error_for(status, message)
        if failure is not None:
            raise failure
        return answers

    def ready(self) -> bool:
        """Whether a runtime answers and takes requests (not draining): with several, one lost runtime
        leaves the service ready (its requests go to the others) while it restarts."""
        return any(self._ping(runtime) for runtime in range(len(self.paths)))

    def _ping(self, runtime: int) -> bool:
        for _ in range(2):  # a pooled connection may predate a restart: then once more, fresh
            try:
                conn = self._acquire(runtime)
            except RuntimeUnavailable:
                return False
            try:
                status, _ = conn.control(protocol.PING, "", time.monotonic() + self.connect_timeout_s)
            except OSError:
                conn.close()
                self._flush(runtime)
                continue
            self._release(runtime, conn)
            return status == protocol.OK
        return False

    def close(self) -> None:
        """Close every idle connection."""
        with self._lock:
            pools, self._free = self._free, [[] for _ in self.paths]
        for pool in pools:
            for conn in pool:
                conn.close()

    def _next_runtime(self) -> int:
        if len(self.paths) == 1:
            return 0
        with self._lock:
            self._turn = (self._turn + 1) % len(self.paths)
            return self._turn

    def _acquire(self, runtime: int, deadline: float | None = None) -> _Connection:
        view = self._views[runtime]
        stale: list[_Connection] = []
        with self._lock:
            pool = self._free[runtime]
            epoch = view.state.epoch if view.state is not None else None
            while pool:
                conn = pool.pop()
                if epoch is None or conn.catalog.epoch == epoch:
                    break
                stale.append(conn)  # from before a change of what the runtime serves
            else:
                conn = None
        for old in stale:
            old.close()
        if conn is not None:
            return conn
        # A runtime that is up answers a new connection between two passes; one pass (a slow model's, an
        # explanation's) may take longer than the connect timeout, so a request waits for the handshake
        # as long as its deadline allows, as it would wait in the queue. A runtime that is down refuses
        # the connection at once.
        timeout_s = self.connect_timeout_s if deadline is None else \
            max(self.connect_timeout_s, deadline - time.monotonic())
        try:
            conn = _Connection(self.paths[runtime], timeout_s)
        except (OSError, ValueError) as exc:
            raise RuntimeUnavailable(f"the model runtime is not available ({type(exc).__name__}); "
                                     "retry shortly") from None
        self._adopt(view, conn)
        return conn

    def _adopt(self, view: _View, conn: _Connection) -> None:
        """Take a new connection's catalog when it is newer, and its state page from a new runtime."""
        with self._lock:
            known = view.catalog
            if known is None or not known.generation.same_runtime(conn.catalog.generation):
                assert conn.state_fd is not None
                # The old page is not closed: a thread may be reading it; it goes with its last reference.
                view.state, conn.state_fd = protocol.State(conn.state_fd), None
                view.catalog = conn.catalog
            elif conn.catalog.epoch > known.epoch:
                view.catalog = conn.catalog
        if conn.state_fd is not None:
            os.close(conn.state_fd)
            conn.state_fd = None

    def _flush(self, runtime: int) -> None:
        with self._lock:
            pool, self._free[runtime] = self._free[runtime], []
        for conn in pool:
            conn.close()

    def _release(self, runtime: int, conn: _Connection) -> None:
        with self._lock:
            self._free[runtime].append(conn)
