"""An event loop's side of the model runtimes: every request of a loop turn goes to the runtime in one
message, and every answer of a batch comes back in one.

No torch, no threads: one :class:`GroupingClient` per HTTP worker's event loop, called only from that loop.

Contract:

- ``await catalog()`` is what the runtimes serve (merged when there are several), connecting first when
  needed and again when a runtime's state page shows a newer epoch (hot reload). The old connection stays
  until its answers are in, so a request resolved just before a change is still answered.
- ``infer(model, inputs, deadline)`` returns a future of the logits ``[N, classes]`` (a fresh array), or
  of the ServiceError the runtime answered. The request waits until the end of the loop turn; then every
  request of the turn is packed into *segments* (per runtime, model and dtype, at most the runtime's batch
  size in rows; a larger request spans several), each segment's rows are copied into a free slot of that
  connection's shared arena, and the segments go as one GROUP message. A model has at most
  ``segments_in_flight`` segments at a runtime per connection (one computing, one queued behind it): the
  requests that arrive meanwhile wait in the worker and go together, as one segment, when an answer comes
  back. So the runtime gets few, full segments under load (its forward pass costs far less per image in
  a large batch), and a lone request at once. A request that finds no free slot, or its model's segments
  all out, waits (until its deadline); at most ``max_waiting`` requests of a model wait so in this worker,
  and the ones beyond are refused at once with QueueFull (429), as the runtime refuses a full queue: an
  overload is shed where it arrives rather than held until deadlines pass.
- A request not answered by its deadline fails with DeadlineExceeded; a late answer is dropped.
- A runtime that is lost fails what it had been sent with RuntimeUnavailable (503) when it is the only
  one; with several, what it had been sent goes to another (inference has no side effects: running it
  again elsewhere is safe even if the lost runtime had run it). What it had not been sent goes to another
  runtime, or to the runtime again once it is back. A runtime that cannot be reached fails the waiting
  requests no other runtime serves at once with RuntimeUnavailable.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from service.errors import DeadlineExceeded, NotReady, QueueFull, RuntimeUnavailable, ServiceError
from service.handoff import protocol
from service.handoff.catalog import Catalog, Generation, ServedModel
from service.handoff.client import error_for

log = logging.getLogger(__name__)

_DTYPE_CODES = {dtype: code for code, dtype in enumerate(protocol.DTYPES)}


@dataclass(eq=False, slots=True)
class _Request:
    model: ServedModel
    inputs: np.ndarray
    deadline: float
    future: asyncio.Future[np.ndarray]
    cohort: _Cohort
    out: np.ndarray | None = None
    placed: int = 0  # rows already placed into segments
    parts: int = 0  # segments sent and not yet answered
    abandoned: bool = False  # sent again, as a new request, after its runtime was lost


@dataclass(eq=False, slots=True)
class _Cohort:
    """The requests one flush took: one timer watches their deadlines."""

    requests: list[_Request]
    left: int
    timer: asyncio.TimerHandle | None = None


@dataclass(eq=False, slots=True)
class _Segment:
    slot: int
    index: int
    dtype: np.dtype
    rows: np.ndarray  # a view over the slot's whole input region
    used: int = 0
    requests: int = 0
    deadline: float = 0.0
    # (request, first row of the request, first row in the segment, rows)
    pieces: list[tuple[_Request, int, int, int]] = field(default_factory=list)


class _Link:
    """One connection to one runtime: its catalog, its arena and the segments it has not answered."""

    def __init__(self, sock: socket.socket, message: dict, fd: int) -> None:
        self.sock = sock
        self.catalog = Catalog.from_message(message)
        self.arena = protocol.Arena(fd, protocol.layout_of(message))
        self.free = list(range(self.arena.layout.slots - 1, -1, -1))
        self.in_flight: dict[int, _Segment] = {}
        self.busy: dict[int, int] = {}  # model index -> its segments sent and not answered
        self.outbox: list[bytes] = []  # messages the socket had no room for yet
        self.retired = False  # a newer connection to the same runtime took over

    def close(self) -> None:
        self.sock.close()
        self.arena.close()


class GroupingClient:
    """Connections from one event loop to every runtime of this service (module docstring)."""

    def __init__(self, paths: list[Path], connect_timeout_s: float = 2.0,
                 segments_in_flight: int = 2, max_waiting: int = 256) -> None:
        if not paths:
            raise ValueError("no model runtime socket given")
        self.paths = paths
        self.connect_timeout_s = connect_timeout_s
        self.segments_in_flight = segments_in_flight
        self.max_waiting = max_waiting
        self._loop: asyncio.AbstractEventLoop | None = None
        self._links: list[_Link | None] = [None] * len(paths)
        self._old: list[_Link] = []  # retired links still waiting for answers
        self._states: list[protocol.State | None] = [None] * len(paths)
        self._generations: list[Generation | None] = [None] * len(paths)  # each runtime's, last connected
        self._connecting: list[asyncio.Task[None] | None] = [None] * len(paths)
        self._merged: Catalog | None = None
        self._waiting: list[_Request] = []  # submitted this turn, or waiting for a slot
        self._flush_soon = False
        self._turn = 0

    # --- what is served ----------------------------------------------------------------------------------
    async def catalog(self) -> Catalog:
        """The models served (RuntimeUnavailable while no runtime answers)."""
        stale = [r for r in range(len(self.paths)) if not self._current(r)]
        failure: RuntimeUnavailable | None = None
        for runtime in stale:
            try:
                await asyncio.shield(self._connecting_to(runtime))
            except RuntimeUnavailable as exc:
                failure = exc
        catalogs = [link.catalog for link in self._links if link is not None]
        if not catalogs:
            raise failure or RuntimeUnavailable("no model runtime answers; retry shortly")
        self._merged = Catalog.combined(catalogs, self._merged)
        return self._merged

    def _current(self, runtime: int) -> bool:
        link, state = self._links[runtime], self._states[runtime]
        return link is not None and (state is None or state.epoch == link.catalog.epoch)

    def _connecting_to(self, runtime: int) -> asyncio.Task[None]:
        """The attempt to open a new link to ``runtime`` (one at a time per runtime)."""
        task = self._connecting[runtime]
        if task is None:
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
            task = self._connecting[runtime] = self._loop.create_task(self._open(runtime))
            task.add_done_callback(functools.partial(self._connected, runtime))
        return task

    def _connected(self, runtime: int, task: asyncio.Task[None]) -> None:
        self._connecting[runtime] = None
        error = None if task.cancelled() else task.exception()
        if isinstance(error, RuntimeUnavailable):
            # Requests no other runtime serves fail at once (503) rather than wait for their deadline.
            live = [link for link in self._links if link is not None]
            for request in self._take_waiting():
                if any(request.model.key in link.catalog.position for link in live):
                    self._waiting.append(request)
                else:
                    self._fail(request, error)
        if self._waiting:
            self._schedule()

    async def _open(self, runtime: int) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            # A Unix socket connects at once, or refuses at once (no runtime, or its backlog is full).
            sock.connect(str(self.paths[runtime]))
            ready: asyncio.Future[None] = loop.create_future()
            loop.add_reader(sock.fileno(), _set_once, ready)
            # A runtime that is up greets between two passes; one pass (a slow model's, an explanation's)
            # may outlast the connect timeout, so the greeting is awaited as long as a waiting request may
            # still be answered (each fails at its own deadline meanwhile).
            wait_s = max([self.connect_timeout_s, *(r.deadline - time.monotonic() for r in self._waiting)])
            try:
                await asyncio.wait_for(ready, wait_s)
            finally:
                loop.remove_reader(sock.fileno())
            message, fd, state_fd = protocol.receive_catalog(sock)
        except (OSError, ValueError, asyncio.TimeoutError) as exc:
            sock.close()
            raise RuntimeUnavailable(f"the model runtime is not available ({type(exc).__name__}); "
                                     "retry shortly") from None
        link = _Link(sock, message, fd)
        generation, known = link.catalog.generation, self._generations[runtime]
        if known is None or not known.same_runtime(generation):  # a new runtime process: its own state page
            old_state = self._states[runtime]
            self._states[runtime] = protocol.State(state_fd)
            self._generations[runtime] = generation
            if old_state is not None:
                old_state.close()
        else:
            os.close(state_fd)
        old = self._links[runtime]
        self._links[runtime] = link
        loop.add_reader(sock.fileno(), self._on_readable, link)
        if old is not None:
            self._retire(old)

    def _retire(self, link: _Link) -> None:
        """A link replaced by a newer one: closed once its answers are in."""
        link.retired = True
        if link.in_flight:
            self._old.append(link)
        else:
            self._close(link)

    def _close(self, link: _Link) -> None:
        if self._loop is not None and link.sock.fileno() >= 0:
            self._loop.remove_reader(link.sock.fileno())
            self._loop.remove_writer(link.sock.fileno())
        link.close()
        if link in self._old:
            self._old.remove(link)

    # --- inference ---------------------------------------------------------------------------------------
    def infer(self, model: ServedModel, inputs: np.ndarray, deadline: float) -> asyncio.Future[np.ndarray]:
        """Logits for ``inputs`` [N, *shape] (uint8 or float32), by ``deadline`` (time.monotonic())."""
        if inputs.dtype not in _DTYPE_CODES:
            raise ValueError(f"inputs must be uint8 or float32, not {inputs.dtype}")
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        request = _Request(model, inputs, deadline, loop.create_future(), _NO_COHORT)
        self._waiting.append(request)
        self._schedule()
        return request.future

    def _schedule(self) -> None:
        if not self._flush_soon:
            self._flush_soon = True
            assert self._loop is not None
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Send every waiting request that has a connection and a slot, one message per runtime."""
        self._flush_soon = False
        waiting, self._waiting = self._waiting, []
        fresh = [r for r in waiting if r.cohort is _NO_COHORT]
        if fresh:
            self._watch(fresh)
        current = [self._current(r) for r in range(len(self.paths))]
        for runtime, ok in enumerate(current):
            if not ok:
                self._connecting_to(runtime)  # meanwhile an older link still serves what it knows
        segments: dict[tuple[int, int, np.dtype], _Segment] = {}
        sent: dict[int, list[_Segment]] = {}
        self._turn += 1
        held: dict[str, int] = {}
        for request in waiting:  # oldest first: under overload the newest are refused
            if request.future.done():
                continue
            chosen = self._runtime_for(request)
            if chosen is not None and not self._place(request, chosen, segments, sent):
                key = request.model.key
                held[key] = held.get(key, 0) + 1
                if held[key] > self.max_waiting and not request.placed:
                    self._fail(request, QueueFull(f"model {key} has {self.max_waiting} requests queued in "
                                                  "this worker; retry shortly"))
                else:
                    self._waiting.append(request)  # no free slot: it goes with the next answer
        for runtime, batch in sent.items():
            self._send(runtime, batch)

    def _runtime_for(self, request: _Request) -> int | None:
        """The runtime this request goes to; None when it waits (for a connection) or has failed."""
        count, key = len(self.paths), request.model.key
        connecting = False
        for step in range(count):
            runtime = (self._turn + step) % count
            link = self._links[runtime]
            if link is None:
                connecting = True  # it may serve the model once connected
            elif key in link.catalog.position:
                return runtime
        if connecting:
            self._waiting.append(request)
        else:
            self._fail(request, NotReady(f"model {key} is no longer loaded by any model runtime"))
        return None

    def _take_waiting(self) -> list[_Request]:
        waiting, self._waiting = self._waiting, []
        return waiting

    def _place(self, request: _Request, runtime: int, segments: dict[tuple[int, int, np.dtype], _Segment],
               sent: dict[int, list[_Segment]]) -> bool:
        """Copy the request's rows into segments of ``runtime``'s link; False when a slot ran out."""
        link = self._links[runtime]
        assert link is not None
        index = link.catalog.position[request.model.key]
        inputs = request.inputs
        shape = inputs.shape[1:]
        limit = link.catalog.max_batch_size
        key = (runtime, index, inputs.dtype)
        while request.placed < len(inputs):
            segment = segments.get(key)
            if segment is None or segment.used == limit:
                if not link.free or link.busy.get(index, 0) >= self.segments_in_flight:
                    return False
                link.busy[index] = link.busy.get(index, 0) + 1
                slot = link.free.pop()
                segment = segments[key] = _Segment(slot, index, inputs.dtype,
                                                   link.arena.input(slot, inputs.dtype, (limit, *shape)))
                sent.setdefault(runtime, []).append(segment)
            rows = min(len(inputs) - request.placed, limit - segment.used)
            segment.rows[segment.used:segment.used + rows] = inputs[request.placed:request.placed + rows]
            segment.pieces.append((request, request.placed, segment.used, rows))
            segment.used += rows
            segment.requests += 1
            segment.deadline = max(segment.deadline, request.deadline)
            request.placed += rows
            request.parts += 1
        return True

    def _send(self, runtime: int, segments: list[_Segment]) -> None:
        link = self._links[runtime]
        assert link is not None
        for segment in segments:
            link.in_flight[segment.slot] = segment
        for start in range(0, len(segments), protocol.MAX_SEGMENTS):
            message = protocol.group([(s.slot, s.index, s.requests, _DTYPE_CODES[s.dtype], s.used, s.deadline)
                                      for s in segments[start:start + protocol.MAX_SEGMENTS]])
            if link.outbox:
                link.outbox.append(message)
                continue
            try:
                link.sock.send(message)
            except BlockingIOError:  # the runtime is behind: send when the socket has room
                link.outbox.append(message)
                assert self._loop is not None
                self._loop.add_writer(link.sock.fileno(), self._drain, link)
            except OSError as exc:
                self._lost(runtime, link, exc)
                return

    def _drain(self, link: _Link) -> None:
        while link.outbox:
            try:
                link.sock.send(link.outbox[0])
            except BlockingIOError:
                return
            except OSError as exc:
                runtime = self._links.index(link) if link in self._links else None
                self._lost(runtime, link, exc)
                return
            link.outbox.pop(0)
        assert self._loop is not None
        self._loop.remove_writer(link.sock.fileno())

    # --- answers -----------------------------------------------------------------------------------------
    def _on_readable(self, link: _Link) -> None:
        while True:
            try:
                message = link.sock.recv(protocol.MAX_ANSWER_BYTES)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                message = b""
            if not message:
                runtime = self._links.index(link) if link in self._links else None
                self._lost(runtime, link, ConnectionError("the model runtime closed the connection"))
                return
            try:
                results = protocol.read_answers(message)
            except ValueError:
                status, _, text = _reply(message)
                log.error("the model runtime refused a group (status %d): %s", status, text)
                results = [(slot, status, 0, text) for slot in list(link.in_flight)]
            for slot, status, rows, text in results:
                self._answered(link, slot, status, rows, text)
        if link.retired and not link.in_flight:
            self._close(link)
        if self._waiting:
            self._schedule()  # slots came free

    def _answered(self, link: _Link, slot: int, status: int, rows: int, text: str) -> None:
        segment = link.in_flight.pop(slot, None)
        if segment is None:
            return
        link.free.append(slot)
        link.busy[segment.index] -= 1
        if status == protocol.OK and rows != segment.used:
            status, text = protocol.FAILED, f"the model runtime answered {rows} rows for {segment.used}"
        if status != protocol.OK:
            error = error_for(status, text)
            for request, _, _, _ in segment.pieces:
                if not request.abandoned:
                    self._fail(request, error)
            return
        logits = link.arena.output(slot, (rows, segment.pieces[0][0].model.manifest.num_outputs))
        for request, first, at, count in segment.pieces:
            if request.future.done() or request.abandoned:
                continue
            if request.out is None:
                request.out = np.empty((len(request.inputs), logits.shape[1]), np.float32)
            request.out[first:first + count] = logits[at:at + count]
            request.parts -= 1
            if request.parts == 0 and request.placed == len(request.inputs):
                request.future.set_result(request.out)
                self._settled(request)

    def _lost(self, runtime: int | None, link: _Link, exc: Exception) -> None:
        """The runtime behind ``link`` is gone: fail what it was sent; what waits goes elsewhere."""
        if runtime is not None and self._links[runtime] is link:
            self._links[runtime] = None
        log.warning("lost the model runtime at %s: %s", "?" if runtime is None else self.paths[runtime], exc)
        error = RuntimeUnavailable("the model runtime is not available (restarting); retry shortly")
        for segment in link.in_flight.values():
            for request, _, _, _ in segment.pieces:
                if request.future.done() or request.abandoned:
                    continue
                if len(self.paths) == 1:
                    self._fail(request, error)
                else:
                    request.abandoned = True
                    self._waiting.append(_Request(request.model, request.inputs, request.deadline,
                                                  request.future, request.cohort))
        link.in_flight.clear()
        self._close(link)
        if self._waiting:
            self._schedule()

    # --- deadlines ---------------------------------------------------------------------------------------
    def _watch(self, requests: list[_Request]) -> None:
        cohort = _Cohort(requests, len(requests))
        for request in requests:
            request.cohort = cohort
        self._arm(cohort, min(r.deadline for r in requests))

    def _arm(self, cohort: _Cohort, deadline: float) -> None:
        assert self._loop is not None
        cohort.timer = self._loop.call_later(max(deadline - time.monotonic(), 0.0), self._expire, cohort)

    def _expire(self, cohort: _Cohort) -> None:
        now = time.monotonic()
        left = [r for r in cohort.requests if not r.future.done()]
        for request in left:
            if request.deadline <= now:
                self._fail(request, DeadlineExceeded(f"model {request.model.key} did not answer before the "
                                                     "request deadline"))
        left = [r for r in left if not r.future.done()]
        if left:
            cohort.requests = left
            self._arm(cohort, min(r.deadline for r in left))

    def _fail(self, request: _Request, error: ServiceError) -> None:
        if not request.future.done():
            request.future.set_exception(error)
            self._settled(request)

    @staticmethod
    def _settled(request: _Request) -> None:
        cohort = request.cohort
        cohort.left -= 1
        if cohort.left == 0 and cohort.timer is not None:
            cohort.timer.cancel()

    # --- the end -----------------------------------------------------------------------------------------
    def close(self) -> None:
        """Fail what is waiting and close every connection."""
        error = NotReady("the service is shutting down")
        for request in self._take_waiting():
            self._fail(request, error)
        for link in [*self._links, *self._old]:
            if link is not None:
                for segment in link.in_flight.values():
                    for request, _, _, _ in segment.pieces:
                        self._fail(request, error)
                self._close(link)
        self._links = [None] * len(self.paths)
        for state in self._states:
            if state is not None:
                state.close()
        self._states = [None] * len(self.paths)

    def links(self) -> Iterator[_Link]:
        """The open connections (for tests and metrics)."""
        yield from (link for link in self._links if link is not None)
        yield from self._old


_NO_COHORT = _Cohort([], 0)


def _reply(message: bytes) -> tuple[int, int, str]:
    _, status, _, _ = protocol.HEADER.unpack_from(message)
    return status or protocol.FAILED, 0, message[protocol.HEADER.size:].decode(errors="replace")


def _set_once(future: asyncio.Future[None]) -> None:
    # A reader callback: it may run again before the loop removes it.
    if not future.done():
        future.set_result(None)
