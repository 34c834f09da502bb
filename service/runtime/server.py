"""The model runtime: one process per device owns the models and runs every HTTP worker's requests in
batches.

One thread runs an event loop (no hand-off between threads on the way to the model): it accepts
connections (one per request slot of an HTTP worker, see ``protocol.py``), reads requests, forms batches
with ``batching.BatchQueue``, runs the forward pass on rows that sit in shared memory, writes the logits
back into each request's slot and answers. Requests that arrive during a pass wait in their sockets and
form the next batch. SIGUSR1 turns readiness off (drain); SIGTERM stops accepting, runs what is queued,
and exits.

The served models change only on this thread, between batches (hot reload): ``control.ModelControl``
loads and warms a version on its own thread and hands the loop a ``Change``. The model table is
append-only (a request names its model by index, so an index is never reused); a new version is listed
in the catalog at once, and a version the change retires leaves the catalog but still runs the requests
addressed to it for a grace period (a request's deadline), then its queue is empty and it is dropped.
Each change bumps the catalog's epoch in the state page every worker maps (``protocol.State``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import selectors
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from queue import Empty, SimpleQueue
from typing import Any

import numpy as np

from service.errors import QueueFull
from service.runtime import protocol
from service.runtime.batching import BatchStats, Queued
from service.runtime.registry import LoadedModel
from service.runtime.table import Change, ModelTable, Observer

log = logging.getLogger(__name__)


@dataclass(eq=False, slots=True)
class _Connection:
    sock: socket.socket
    slot: protocol.Slot
    pending: bool = False  # a request of this slot is queued or running


@dataclass(slots=True)
class _Request:
    conn: _Connection
    rows: np.ndarray


class RuntimeServer:
    """The event loop of one device's runtime (see the module docstring)."""

    def __init__(self, models: list[LoadedModel], refused: dict[str, str], listener: socket.socket,
                 max_batch_size: int, max_batch_delay_s: float, max_queue: int,
                 observe: Callable[[LoadedModel], Observer] | None = None,
                 forget: Callable[[LoadedModel], None] | None = None, grace_s: float = 10.0) -> None:
        self.max_batch_size = max_batch_size
        self.table = ModelTable(max_batch_size, max_batch_delay_s, max_queue, observe, forget, grace_s)
        self.models, self.queues, self.observers = self.table.models, self.table.queues, self.table.observers
        self._inbox: SimpleQueue[Change] = SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.commands: Callable[[_Connection, int, str], str | None] | None = None
        self.draining = False
        self.stopping = False
        self._listener: socket.socket | None = listener
        self._sel = selectors.DefaultSelector()
        self._connections: dict[int, _Connection] = {}
        self.table.apply(Change(added=list(models), refused=dict(refused)))

    @property
    def catalog(self) -> dict[str, Any]:
        """What a new connection is told now."""
        return self.table.catalog

    # --- what is served ----------------------------------------------------------------------------------
    def submit(self, change: Change) -> None:
        """Hand the loop a change (any thread); it is applied between batches."""
        self._inbox.put(change)
        with contextlib.suppress(BlockingIOError):  # a full pipe of wake-ups: the loop will look anyway
            os.write(self._wake_w, b"c")

    def _take_changes(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_r, 4096)
        while True:
            try:
                change = self._inbox.get_nowait()
            except Empty:
                return
            self.table.apply(change)
            if change.reply is not None:
                conn, status, message = change.reply
                self._answer(conn, protocol.INFER, status, message=message)

    # --- the loop ----------------------------------------------------------------------------------------
    def run(self, wakeup_fd: int | None = None) -> None:
        """Serve until :meth:`stop` (or SIGTERM, through ``wakeup_fd``) and nothing is left queued."""
        assert self._listener is not None
        self._listener.setblocking(False)
        self._sel.register(self._listener, selectors.EVENT_READ, "accept")
        if wakeup_fd is not None:
            self._sel.register(wakeup_fd, selectors.EVENT_READ, "signal")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "change")
        while not (self.stopping and not any(self.queues)):
            next_drop = self.table.sweep() if self.table.retiring else None
            self._poll(0.0 if any(self.queues) else next_drop)
            self._run_batch()
        self._close()

    def stop(self) -> None:
        """Stop accepting; what is queued still runs, then :meth:`run` returns."""
        self.stopping = True
        if self._listener is not None:
            self._sel.unregister(self._listener)
            self._listener.close()
            self._listener = None

    def _poll(self, timeout: float | None) -> None:
        for key, _ in self._sel.select(timeout):
            if key.data == "accept":
                self._accept()
            elif key.data == "signal":
                self._on_signals(key.fileobj)
            elif key.data == "change":
                self._take_changes()
            else:
                self._read(key.data)

    def _on_signals(self, fd: Any) -> None:
        for signum in os.read(fd if isinstance(fd, int) else fd.fileno(), 64):
            if signum == signal.SIGUSR1:
                if not self.draining:
                    log.info("draining: readiness off, still serving")
                self.draining = True
            elif signum in (signal.SIGTERM, signal.SIGINT) and not self.stopping:
                log.info("stopping: finishing %d queued requests", sum(map(len, self.queues)))
                self.draining = True
                self.stop()

    # --- connections -------------------------------------------------------------------------------------
    def _accept(self) -> None:
        while self._listener is not None:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            layout = self.table.layout
            fd = protocol.new_shared_memory(layout.size)
            try:
                protocol.send_catalog(sock, self.table.catalog, fd, self.table.state_fd)
                conn = _Connection(sock, protocol.Slot(fd, layout))
            except OSError as exc:
                log.debug("a new connection failed: %s", exc)
                os.close(fd)
                sock.close()
                continue
            sock.setblocking(False)
            self._connections[sock.fileno()] = conn
            self._sel.register(sock, selectors.EVENT_READ, conn)

    def _drop(self, conn: _Connection) -> None:
        if conn.sock.fileno() in self._connections:
            del self._connections[conn.sock.fileno()]
            self._sel.unregister(conn.sock)
        for queue in self.queues:
            queue.drop(lambda request: request.conn is not conn)
        conn.sock.close()
        conn.slot.close()

    def _read(self, conn: _Connection) -> None:
        try:
            message = conn.sock.recv(protocol.REQUEST.size + protocol.MAX_NAME + 1)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            message = b""
        if not message:
            self._drop(conn)  # the worker (or its request thread) is gone: forget what it queued
            return
        kind = message[0]
        named = kind in (protocol.LOAD, protocol.UNLOAD)
        if len(message) != protocol.REQUEST.size and not (
                named and protocol.REQUEST.size < len(message) <= protocol.REQUEST.size + protocol.MAX_NAME):
            self._answer(conn, protocol.INFER, protocol.BAD_REQUEST, message="malformed request")
            return
        kind, dtype, index, rows, deadline = protocol.REQUEST.unpack_from(message)
        if kind == protocol.PING:
            self._answer(conn, kind, protocol.NOT_READY if self.draining else protocol.OK)
        elif named and not conn.pending:
            self._command(conn, kind, message[protocol.REQUEST.size:].decode(errors="replace"))
        elif kind != protocol.INFER or conn.pending:
            self._answer(conn, kind, protocol.BAD_REQUEST, message="one request at a time per slot")
        elif self.stopping:
            self._answer(conn, kind, protocol.NOT_READY, message="the model runtime is shutting down")
        else:
            self._queue(conn, dtype, index, rows, deadline)

    def _command(self, conn: _Connection, kind: int, name: str) -> None:
        refusal = self.commands(conn, kind, name) if self.commands else "this runtime takes no commands"
        if refusal:
            self._answer(conn, kind, protocol.BAD_REQUEST, message=refusal)
        else:
            conn.pending = True  # the model control answers through a Change

    def _queue(self, conn: _Connection, dtype: int, index: int, rows: int, deadline: float) -> None:
        if index >= len(self.models) or dtype >= len(protocol.DTYPES) or not 0 < rows <= self.max_batch_size:
            self._answer(conn, protocol.INFER, protocol.BAD_REQUEST,
                         message=f"no model {index}, dtype {dtype} or {rows} rows")
            return
        model = self.models[index]
        if model is None:
            self._answer(conn, protocol.INFER, protocol.NOT_READY,
                         message=f"model {self.table.keys[index]} is no longer loaded (retired by the "
                                 "version policy, or unloaded)")
            return
        shape = (rows, *model.manifest.input.shape)
        if (math.prod(shape) * protocol.DTYPES[dtype].itemsize > conn.slot.layout.input_bytes
                or rows * model.manifest.num_outputs * 4 > conn.slot.layout.output_bytes):
            self._answer(conn, protocol.INFER, protocol.NOT_READY,
                         message=f"model {model.key} does not fit this connection's slot: reconnect")
            return
        request = _Request(conn, conn.slot.input(protocol.DTYPES[dtype], shape))
        try:
            self.queues[index].put(Queued(request, rows, deadline))
        except QueueFull as exc:
            self._answer(conn, protocol.INFER, protocol.QUEUE_FULL, message=exc.message)
            return
        conn.pending = True

    def _answer(self, conn: _Connection, kind: int, status: int, rows: int = 0, message: str = "") -> None:
        conn.pending = False
        try:
            protocol.answer(conn.sock, kind, status, rows, message)
        except OSError:  # the worker left: its connection goes, nothing else is affected
            self._drop(conn)

    # --- batches -----------------------------------------------------------------------------------------
    def _run_batch(self) -> None:
        """Run one batch of the model whose oldest request has waited longest."""
        waiting = [q for q in self.queues if len(q)]
        if not waiting:
            return
        index = self.queues.index(min(waiting, key=lambda q: q.oldest or 0.0))
        queue = self.queues[index]
        expired: list[Queued[_Request]] = []
        batch = queue.take(time.monotonic(), expired)
        while batch and (wait := queue.wait_s(batch, time.monotonic())) > 0:
            self._poll(wait)  # concurrent traffic: a little more company, for no longer than a pass
            if not queue.top_up(batch, time.monotonic(), expired) and len(queue):
                break  # the next request does not fit: run what we have
        batch = [r for r in batch if r.item.conn.sock.fileno() in self._connections]  # callers still there
        self.observers[index].queue_depth(len(queue))  # what still waits while this batch runs
        for request in expired:
            self._answer(request.item.conn, protocol.INFER, protocol.DEADLINE,
                         message=f"model {queue.name}: the deadline passed in the queue")
        if batch:
            self._execute(index, batch)

    def _execute(self, index: int, batch: list[Queued[_Request]]) -> None:
        model, queue = self.models[index], self.queues[index]
        assert model is not None, "a model with requests queued is not dropped"
        started = time.monotonic()
        total = sum(r.rows for r in batch)
        try:
            out = model.forward([r.item.rows for r in batch])
            if out.shape != (total, model.manifest.num_outputs):
                raise ValueError(f"the model returned shape {out.shape} for {total} inputs")
        except Exception as exc:
            log.exception("batch of %d rows for %s failed", total, model.key)
            for request in batch:
                self._answer(request.item.conn, protocol.INFER, protocol.FAILED,
                             message=f"inference failed for model {model.key}: {type(exc).__name__}")
            self._report(index, batch, total, started, time.monotonic() - started, failed=True)
            return
        took = time.monotonic() - started
        queue.pass_done(took)
        offset = 0
        for request in batch:
            request.item.conn.slot.output(out[offset:offset + request.rows].shape)[:] = \
                out[offset:offset + request.rows]
            offset += request.rows
            self._answer(request.item.conn, protocol.INFER, protocol.OK, request.rows)
        self._report(index, batch, total, started, took, failed=False)

    def _report(self, index: int, batch: list[Queued[_Request]], total: int, started: float, took: float,
                failed: bool) -> None:
        stats = BatchStats(rows=total, requests=len(batch), compute_s=took, failed=failed,
                           queue_wait_s=tuple(started - r.queued_at for r in batch))
        try:
            self.observers[index].batch_done(stats)
        except Exception:  # metrics must never take the runtime down
            log.exception("batch observer failed")

    def _close(self) -> None:
        for conn in list(self._connections.values()):
            self._drop(conn)
        self._sel.close()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        self.table.close()


def listen(path: Path) -> socket.socket:
    """A SEQPACKET Unix socket listening at ``path`` (a stale file from a crashed runtime is replaced)."""
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.bind(str(path))
    sock.listen(1024)
    return sock
