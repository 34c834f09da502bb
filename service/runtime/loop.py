"""The model runtime: one process per device owns the models and runs every HTTP worker's requests in
batches.

One thread runs an event loop (no hand-off between threads on the way to the model): it accepts
connections (one per HTTP worker's event loop, or per request thread of a Flask worker; see
``protocol.py``), reads groups of segments (the rows of requests, already in the connection's shared
arena), queues each segment with its model's ``batching.BatchQueue``, runs the forward pass on rows that
sit in shared memory, writes the logits back into each segment's slot and answers every segment of a
batch that came from one connection in one message. Groups that arrive during a pass wait in their sockets
and form the next batch. SIGUSR1 turns readiness off (drain); SIGTERM stops accepting, runs what is queued,
and exits.

The served models change only on this thread, between batches (hot reload): ``control.ModelControl``
loads and warms a version on its own thread and hands the loop a ``Change``. The model table is
append-only (a request names its model by index, so an index is never reused); a new version is listed
in the catalog at once, and a version the change retires leaves the catalog but still runs the requests
addressed to it for a grace period (a request's deadline), then its queue is empty and it is dropped.
Each change bumps the catalog's epoch in the state page every worker maps (``protocol.State``).

Explanations (EXPLAIN messages) wait in a queue of their own (``explain.ExplainQueue``) and run one at a
time between batches, within a share of the loop's time while predictions wait (``explain_share``).
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
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty, SimpleQueue
from typing import Any

import numpy as np

from service.contract.loading import LoadedModel
from service.errors import QueueFull
from service.handoff import protocol
from service.metrics import BatchStats, ExplainStats
from service.runtime.batching import Queued
from service.runtime.explain import ExplainError, ExplainQueue, Job, attribute
from service.runtime.table import Change, ModelTable, Observer

log = logging.getLogger(__name__)


@dataclass(eq=False, slots=True)
class _Connection:
    sock: socket.socket
    arena: protocol.Arena
    pending: set[int] = field(default_factory=set)  # slots whose segment is queued or running
    commanding: bool = False  # a LOAD or UNLOAD of this connection is under way
    results: list[tuple[int, int, int, str]] = field(default_factory=list)  # to send at the end of the step


# A GROUP message at its largest, and one byte more: a longer one arrives cut and is refused as malformed.
_MAX_READ = protocol.HEADER.size + protocol.MAX_SEGMENTS * protocol.SEGMENT.size + 1
_MAX_COMMAND = protocol.HEADER.size + protocol.MAX_NAME


@dataclass(slots=True)
class _Segment:
    conn: _Connection
    slot: int
    rows: np.ndarray


class RuntimeServer:
    """The event loop of one device's runtime (see the module docstring)."""

    def __init__(self, models: list[LoadedModel], refused: dict[str, str], listener: socket.socket,
                 max_batch_size: int, max_batch_delay_s: float, max_queue: int,
                 observe: Callable[[LoadedModel], Observer] | None = None,
                 forget: Callable[[LoadedModel], None] | None = None, grace_s: float = 10.0,
                 max_wait_s: float = float("inf"), routing: dict[str, Any] | None = None,
                 explain_max_queue: int = 16, explain_share: float = 0.05) -> None:
        self.max_batch_size = max_batch_size
        self.explanations = ExplainQueue(explain_max_queue, explain_share)
        self._batches_ran = False  # since the last explanation: the runtime is busy with predictions
        self.table = ModelTable(max_batch_size, max_batch_delay_s, max_queue, max_wait_s, observe, forget,
                                grace_s)
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
        self._answering: set[_Connection] = set()  # connections with results to send
        self._drop_later: list[_Connection] = []
        self.table.apply(Change(added=list(models), refused=dict(refused), routing=dict(routing or {})))

    @property
    def catalog_message(self) -> dict[str, Any]:
        """What a new connection is told now."""
        return self.table.catalog_message

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
                conn.commanding = False
                self._reply(conn, protocol.reply(protocol.LOAD, status, message))

    # --- the loop ----------------------------------------------------------------------------------------
    def run(self, wakeup_fd: int | None = None) -> None:
        """Serve until :meth:`stop` (or SIGTERM, through ``wakeup_fd``) and nothing is left queued."""
        assert self._listener is not None
        self._listener.setblocking(False)
        self._sel.register(self._listener, selectors.EVENT_READ, "accept")
        if wakeup_fd is not None:
            self._sel.register(wakeup_fd, selectors.EVENT_READ, "signal")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "change")
        while not (self.stopping and not any(self.queues) and not self.explanations):
            next_drop = self.table.sweep() if self.table.retiring else None
            waits = [w for w in (next_drop, self.explanations.wait_s(time.monotonic())) if w is not None]
            self._poll(0.0 if any(self.queues) else min(waits, default=None))
            self._run_batch()
            self._run_explanation()
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
            assert layout is not None, "the table publishes a layout when it is built"
            fd = protocol.new_shared_memory(layout.size)
            try:
                protocol.send_catalog(sock, self.table.catalog_message, fd, self.table.state_fd)
                conn = _Connection(sock, protocol.Arena(fd, layout))
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
            queue.drop(lambda segment: segment.conn is not conn)
        self.explanations.drop(lambda job: job.conn is not conn)
        self._answering.discard(conn)
        conn.sock.close()
        conn.arena.close()

    def _read(self, conn: _Connection) -> None:
        try:
            message = conn.sock.recv(_MAX_READ)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            message = b""
        if not message:
            self._drop(conn)  # the worker (or its request thread) is gone: forget what it queued
            return
        kind = message[0]
        if len(message) < protocol.HEADER.size:
            self._reply(conn, protocol.reply(kind, protocol.BAD_REQUEST, "malformed message"))
        elif kind == protocol.GROUP:
            self._group(conn, message)
        elif kind == protocol.EXPLAIN:
            self._explain_request(conn, message)
        elif kind == protocol.PING:
            self._reply(conn, protocol.reply(kind, protocol.NOT_READY if self.draining else protocol.OK))
        elif kind in (protocol.LOAD, protocol.UNLOAD, protocol.ROUTE) and len(message) <= _MAX_COMMAND:
            self._command(conn, kind, message[protocol.HEADER.size:].decode(errors="replace"))
        else:
            self._reply(conn, protocol.reply(kind, protocol.BAD_REQUEST, "malformed message"))

    def _reply(self, conn: _Connection, message: bytes) -> None:
        try:
            conn.sock.send(message)
        except OSError:  # the worker left (or stopped reading): its connection goes, nothing else
            self._drop(conn)

    def _command(self, conn: _Connection, kind: int, name: str) -> None:
        if conn.commanding:
            self._reply(conn, protocol.reply(kind, protocol.BAD_REQUEST, "one command at a time"))
            return
        refusal = self.commands(conn, kind, name) if self.commands else "this runtime takes no commands"
        if refusal:
            self._reply(conn, protocol.reply(kind, protocol.BAD_REQUEST, refusal))
        else:
            conn.commanding = True  # the model control answers through a Change

    def _group(self, conn: _Connection, message: bytes) -> None:
        segments = protocol.read_group(message)
        if segments is None:
            self._reply(conn, protocol.reply(protocol.GROUP, protocol.BAD_REQUEST, "malformed group"))
            return
        now = time.monotonic()
        for slot, index, requests, dtype, rows, deadline in segments:
            refusal = self._queue(conn, slot, index, requests, dtype, rows, deadline, now)
            if refusal is not None:
                conn.results.append((slot, *refusal))
                self._answering.add(conn)
        self._send_results()

    def _queue(self, conn: _Connection, slot: int, index: int, requests: int, dtype: int, rows: int,
               deadline: float, now: float) -> tuple[int, int, str] | None:
        """Queue one segment; (status, rows, text) when it is refused."""
        if slot >= conn.arena.layout.slots or slot in conn.pending:
            return protocol.BAD_REQUEST, 0, f"slot {slot} is out of range or in use"
        if (index >= len(self.models) or dtype >= len(protocol.DTYPES) or not 0 < rows <= self.max_batch_size
                or requests < 1):
            return protocol.BAD_REQUEST, 0, f"no model {index}, dtype {dtype}, {rows} rows or {requests} " \
                                            "requests"
        model = self.models[index]
        if model is None:
            return protocol.NOT_READY, 0, (f"model {self.table.keys[index]} is no longer loaded (retired by "
                                           "the version policy, or unloaded)")
        if self.stopping:
            return protocol.NOT_READY, 0, "the model runtime is shutting down"
        shape = (rows, *model.manifest.input.shape)
        if not conn.arena.layout.fits(math.prod(shape[1:]) * protocol.DTYPES[dtype].itemsize,
                                      model.manifest.num_outputs, rows):
            return protocol.NOT_READY, 0, f"model {model.key} does not fit this connection's arena: reconnect"
        segment = _Segment(conn, slot, conn.arena.input(slot, protocol.DTYPES[dtype], shape))
        try:
            self.queues[index].put(Queued(segment, rows, deadline, now, requests))
        except QueueFull as exc:
            return protocol.QUEUE_FULL, 0, exc.message
        conn.pending.add(slot)
        return None

    # --- explanations ------------------------------------------------------------------------------------
    def _explain_request(self, conn: _Connection, message: bytes) -> None:
        parsed = protocol.read_explain(message)
        if parsed is None:
            self._reply(conn, protocol.reply(protocol.EXPLAIN, protocol.BAD_REQUEST, "malformed explanation"))
            return
        (slot, index, dtype, method, steps, deadline), targets = parsed
        refusal = self._explain_refusal(conn, slot, index, dtype, method, steps, targets)
        if refusal is None:
            model = self.models[index]
            assert model is not None
            shape = (len(targets), *model.manifest.input.shape)
            wanted = [-1 if t == protocol.PREDICTED else t for t in targets]
            job = Job(conn, slot, index, conn.arena.input(slot, protocol.DTYPES[dtype], shape), wanted,
                      protocol.METHODS[method], steps, deadline, time.monotonic())
            try:
                self.explanations.put(job, model.key)
                conn.pending.add(slot)
                self.observers[index].explain_queue_depth(self.explanations.depth(index))
            except QueueFull as exc:
                refusal = protocol.QUEUE_FULL, exc.message
                self._explained(job, "refused", 0.0)
        if refusal is not None:
            conn.results.append((slot, refusal[0], 0, refusal[1]))
            self._answering.add(conn)
            self._send_results()

    def _explain_refusal(self, conn: _Connection, slot: int, index: int, dtype: int, method: int, steps: int,
                         targets: list[int]) -> tuple[int, str] | None:
        rows = len(targets)
        if slot >= conn.arena.layout.slots or slot in conn.pending:
            return protocol.BAD_REQUEST, f"slot {slot} is out of range or in use"
        if (index >= len(self.models) or dtype >= len(protocol.DTYPES) or method >= len(protocol.METHODS)
                or not 0 < steps <= protocol.MAX_EXPLAIN_ROWS or rows > self.max_batch_size):
            return protocol.BAD_REQUEST, (f"no model {index}, dtype {dtype} or method {method}, {steps} "
                                          f"steps or {rows} rows (at most {self.max_batch_size})")
        model = self.models[index]
        if model is None or self.stopping:
            return protocol.NOT_READY, (f"model {self.table.keys[index]} is no longer loaded, or the "
                                        "runtime is stopping")
        if any(t != protocol.PREDICTED and t >= model.manifest.num_outputs for t in targets):
            return protocol.BAD_REQUEST, f"a target is not an output of model {model.key}"
        example = math.prod(model.manifest.input.shape) * 4  # attributions are float32, whatever the input
        if not conn.arena.layout.fits(example, model.manifest.num_outputs, rows):
            return protocol.NOT_READY, f"model {model.key} does not fit this connection's arena: reconnect"
        return None

    def _run_explanation(self) -> None:
        """Run the next explanation if its turn has come (ExplainQueue's rule)."""
        now = time.monotonic()
        job = self.explanations.take(self._batches_ran or any(self.queues), now)
        if job is None:
            return
        self._batches_ran = False
        conn, model = job.conn, self.models[job.index]
        conn.pending.discard(job.slot)
        status, rows, text, outcome = protocol.OK, len(job.targets), "", "ok"
        if job.deadline <= now:
            status, rows, text, outcome = protocol.DEADLINE, 0, "the explanation's deadline passed in its " \
                                                                "queue", "deadline"
        elif model is None:
            status, rows, text, outcome = protocol.NOT_READY, 0, "the model is no longer loaded", "refused"
        else:
            try:
                done = attribute(model, job.rows, job.targets, job.method, job.steps, self.max_batch_size)
                conn.arena.output(job.slot, done.logits.shape)[:] = done.logits
                shape = done.attributions.shape
                conn.arena.input(job.slot, np.dtype(np.float32), shape)[:] = done.attributions
            except ExplainError as exc:
                status, rows, text, outcome = protocol.BAD_REQUEST, 0, str(exc), "refused"
            except Exception as exc:
                log.exception("explanation of %d rows for %s failed", len(job.targets), model.key)
                status, rows, outcome = protocol.FAILED, 0, "failed"
                text = f"the explanation failed for model {model.key}: {type(exc).__name__}"
            self.explanations.done(time.monotonic() - now, time.monotonic())
        self._explained(job, outcome, time.monotonic() - now, now - job.queued_at)
        conn.results.append((job.slot, status, rows, text))
        self._answering.add(conn)
        self._send_results()

    def _explained(self, job: Job, outcome: str, took: float, waited: float = 0.0) -> None:
        observer = self.observers[job.index]
        try:
            observer.explained(ExplainStats(job.method, len(job.targets), waited, took, outcome))
            observer.explain_queue_depth(self.explanations.depth(job.index))
        except Exception:  # metrics must never take the runtime down
            log.exception("explanation observer failed")

    def _result(self, segment: _Segment, status: int, rows: int = 0, text: str = "") -> None:
        conn = segment.conn
        conn.pending.discard(segment.slot)
        conn.results.append((segment.slot, status, rows, text))
        self._answering.add(conn)

    def _send_results(self) -> None:
        """One message per connection for every result of this step (a batch, or a group read)."""
        for conn in self._answering:
            results, conn.results = conn.results, []
            for message in protocol.answers(results):
                try:
                    conn.sock.send(message)
                except OSError:  # the worker left (or stopped reading): its connection goes
                    self._drop_later.append(conn)
                    break
        self._answering.clear()
        while self._drop_later:
            self._drop(self._drop_later.pop())

    # --- batches -----------------------------------------------------------------------------------------
    def _run_batch(self) -> None:
        """Run one batch of the model whose oldest request has waited longest."""
        waiting = [q for q in self.queues if len(q)]
        if not waiting:
            return
        index = self.queues.index(min(waiting, key=lambda q: q.oldest or 0.0))
        queue = self.queues[index]
        expired: list[Queued[_Segment]] = []
        batch = queue.take(time.monotonic(), expired)
        while batch and (wait := queue.wait_s(batch, time.monotonic())) > 0:
            self._poll(wait)  # concurrent traffic: a little more company, for no longer than a pass
            if not queue.top_up(batch, time.monotonic(), expired) and len(queue):
                break  # the next request does not fit: run what we have
        batch = [r for r in batch if r.item.conn.sock.fileno() in self._connections]  # callers still there
        self.observers[index].queue_depth(queue.requests)  # what still waits while this batch runs
        for entry in expired:
            self._result(entry.item, protocol.DEADLINE,
                         text=f"model {queue.name}: the deadline passed in the queue")
        if batch:
            self._execute(index, batch)
        self._send_results()

    def _execute(self, index: int, batch: list[Queued[_Segment]]) -> None:
        model, queue = self.models[index], self.queues[index]
        assert model is not None, "a model with requests queued is not dropped"
        started = time.monotonic()
        self._batches_ran = True
        total = sum(r.rows for r in batch)
        try:
            out = model.forward([r.item.rows for r in batch])
            if out.shape != (total, model.manifest.num_outputs):
                raise ValueError(f"the model returned shape {out.shape} for {total} inputs")
        except Exception as exc:
            log.exception("batch of %d rows for %s failed", total, model.key)
            for entry in batch:
                self._result(entry.item, protocol.FAILED,
                             text=f"inference failed for model {model.key}: {type(exc).__name__}")
            self._report(index, batch, total, started, time.monotonic() - started, failed=True)
            return
        took = time.monotonic() - started
        queue.pass_done(took)
        offset = 0
        for entry in batch:
            segment = entry.item
            logits = out[offset:offset + entry.rows]
            segment.conn.arena.output(segment.slot, logits.shape)[:] = logits
            offset += entry.rows
            self._result(segment, protocol.OK, entry.rows)
        self._report(index, batch, total, started, took, failed=False)

    def _report(self, index: int, batch: list[Queued[_Segment]], total: int, started: float, took: float,
                failed: bool) -> None:
        stats = BatchStats(rows=total, requests=sum(r.requests for r in batch), compute_s=took, failed=failed,
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
