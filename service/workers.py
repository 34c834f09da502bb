"""trainserve's gunicorn worker: gthread; kept-alive connections faster, spread evenly; one send a response.

gunicorn's gthread worker hands every request of a kept-alive connection across three threads: its main
thread polls the socket and queues the connection for the thread pool, a pool thread answers the request,
then wakes the main thread through a pipe to put the socket back on the poller. With requests that take
a millisecond, those wake-ups are a large part of each request: 0.2 ms of the 0.8 ms that a request doing
nothing takes at concurrency 1 on the 2-core machine of `make bench`.

Here a pool thread that has answered a request waits briefly on the same connection for the client's
next one and answers it directly, as long as no other connection is waiting for a thread. It gives the
connection back to the poller as soon as one is (so that more connections than threads are served in
turn, never one connection's run of requests after another's), when the client pauses longer than
``LINGER_S``, or when the worker stops; everything else, keep-alive timeouts, graceful shutdown, HTTP/2,
is gunicorn's own code.

It also spreads connections evenly over the workers. All workers accept from one listening socket, and
the kernel gives each new connection to whichever worker's poller runs first: a few long-lived
connections (wrk's 8, a proxy's pool) land unevenly, and a worker with most of them has one core's worth
of model time while the other idles (2 workers, wrk's 8 connections: all 8 on one worker in 8 of 20
rounds of `bench_serve.py`, an even split in 2, and such a round loses up to half the throughput). Each
worker publishes its open connections in a small table the workers share (a shared memory map made in
the master before the fork); a worker that holds more connections than a live sibling stops accepting
for ``ACCEPT_PAUSE_S`` so that the sibling, woken by the same connection, takes it. After
``MAX_DEFERRALS`` pauses in a row it accepts anyway, so a sibling that is stuck or busy delays a new
connection by at most ~10 ms and never refuses it.

And it sends each response in one write. gunicorn writes a response's status line and headers with one
``sendall`` and its body with another: two system calls, two wake-ups of the client, and two releases and
re-takes of the GIL per request. Here the headers are held back and go out with the first body bytes
(``_OneWrite``); anything else done with the socket first sends what is held.
"""

from __future__ import annotations

import mmap
import os
import select
import threading
import time
from typing import Any

from gunicorn.workers import gthread

# How long a thread waits on its connection for the next request: a client that sends its next request
# as soon as it has an answer takes well under this; one that pauses goes back to the poller.
LINGER_S = 0.002

# Connection balancing: how long a busier worker leaves the listening socket to its siblings, and how many
# times in a row before it accepts the connection itself.
ACCEPT_PAUSE_S = 0.001
MAX_DEFERRALS = 10

# A body up to this size goes out in one buffer with the headers (a copy of it); a larger one follows them in
# a second call, whose cost is small beside the body's.
COALESCE_BYTES = 1 << 16

# The table the workers share: slot i holds (pid, open connections) of one worker, pid 0 when free. The
# module is imported in the gunicorn master (it resolves the worker class before forking), so the anonymous
# shared map made here is the same memory in every worker. Aligned 8-byte stores and loads are atomic on
# the platforms torch runs on; a stale read only makes one accept decision less even.
_SLOTS = 256
_TABLE = memoryview(mmap.mmap(-1, _SLOTS * 16)).cast("q")


class ThreadWorker(gthread.ThreadWorker):
    """gthread; a pool thread answers a busy connection's next requests itself; connections spread evenly."""

    _slot: int | None = None  # this worker's row in _TABLE while it accepts connections
    _conns = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._waiting = 0  # connections queued for a pool thread
        self._waiting_lock = threading.Lock()
        self._deferrals = 0  # accept pauses in a row (connection balancing)
        self._paused_until = 0.0

    # --- Connection balancing between workers --------------------------------------------------------------
    # gthread counts its open connections in nr_conns (on the main thread only); every change is published.
    @property
    def nr_conns(self) -> int:
        return self._conns

    @nr_conns.setter
    def nr_conns(self, value: int) -> None:
        self._conns = value
        if self._slot is not None:
            _TABLE[2 * self._slot + 1] = value

    def run(self) -> None:
        self._claim_slot()
        try:
            super().run()
        finally:
            self._release_slot()

    def handle_exit(self, sig: int, frame: Any) -> None:
        self._release_slot()  # a draining worker accepts nothing more: siblings must not wait for it
        super().handle_exit(sig, frame)

    def _claim_slot(self) -> None:
        pid = os.getpid()
        for i in range(_SLOTS):
            slot = (self.age + i) % _SLOTS
            if _TABLE[2 * slot] == 0 or not _alive(_TABLE[2 * slot]):
                _TABLE[2 * slot + 1] = self._conns
                _TABLE[2 * slot] = pid
                self._slot = slot
                return

    def _release_slot(self) -> None:
        slot, self._slot = self._slot, None
        if slot is not None and _TABLE[2 * slot] == os.getpid():
            _TABLE[2 * slot] = 0

    def _busier_than_a_sibling(self) -> bool:
        mine, pid = self._conns, os.getpid()
        for slot in range(_SLOTS):
            other = _TABLE[2 * slot]
            if other and other != pid and _TABLE[2 * slot + 1] < mine and _alive(other):
                return True
        return False

    def accept(self, listener: Any) -> None:
        if self._slot is not None and self._deferrals < MAX_DEFERRALS and self._busier_than_a_sibling():
            self._deferrals += 1
            self._paused_until = time.monotonic() + ACCEPT_PAUSE_S
            super().set_accept_enabled(False)
            return
        self._deferrals = 0
        super().accept(listener)

    def set_accept_enabled(self, enabled: bool) -> None:
        # gthread calls this at the top of every turn of its loop: an accept pause ends here.
        if enabled and self._paused_until:
            if time.monotonic() < self._paused_until:
                enabled = False
            else:
                self._paused_until = 0.0
                if not _readable(self.sockets):
                    self._deferrals = 0  # a sibling took the connection
        super().set_accept_enabled(enabled)

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        if self._paused_until:
            timeout = max(0.0, min(timeout, self._paused_until - time.monotonic()))
        super().wait_for_and_dispatch_events(timeout)

    # --- One write per response ----------------------------------------------------------------------------

    def handle_request(self, req: Any, conn: gthread.TConn) -> Any:
        sock = conn.sock
        conn.sock = held = _OneWrite(sock)
        try:
            return super().handle_request(req, conn)
        finally:
            conn.sock = sock
            held.flush()  # a response without body bytes (HEAD, 204): its headers are still held

    # --- A pool thread stays on a busy connection -----------------------------------------------------------

    def enqueue_req(self, conn: gthread.TConn) -> None:
        with self._waiting_lock:
            self._waiting += 1
        super().enqueue_req(conn)

    def handle(self, conn: gthread.TConn) -> object:
        with self._waiting_lock:
            self._waiting -= 1
        result = super().handle(conn)
        while result is True and self.alive and not self._waiting and _next_request_ready(conn):
            result = super().handle(conn)
        return result


class _OneWrite:
    """A connection's socket for one response: holds its first ``sendall`` (the status line and headers) and
    sends it with the next one (the body), so that a response leaves in one system call.

    Any other use of the socket (``send`` for "100 Continue", ``sendfile``, ``shutdown``, ``fileno``...)
    first sends what is held, so bytes always leave in the order gunicorn wrote them.
    """

    __slots__ = ("_first", "_held", "_sock")

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._held: bytes | None = None
        self._first = True

    def sendall(self, data: Any) -> None:
        if self._first:
            self._first = False
            self._held = bytes(data)
            return
        if self._held is not None and len(data) <= COALESCE_BYTES:
            data, self._held = self._held + bytes(data), None
        self.flush()  # a larger body: its headers go first, on their own
        self._sock.sendall(data)

    def flush(self) -> None:
        """Send what is held, if anything."""
        held, self._held = self._held, None
        if held is not None:
            self._sock.sendall(held)

    def __getattr__(self, name: str) -> Any:
        self.flush()
        return getattr(self._sock, name)


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live worker of this master (a slot a killed worker left may name a reused pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # not ours
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return True  # no /proc (not Linux): the signal check is all there is
    return int(stat[stat.rindex(b")") + 2:].split()[1]) == os.getppid()


def _readable(sockets: list[Any]) -> bool:
    """Whether a connection still waits on any of these listening sockets."""
    poller = select.poll()
    for sock in sockets:
        poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def _next_request_ready(conn: gthread.TConn) -> bool:
    """Whether the connection's next request has arrived (or arrives within LINGER_S)."""
    if getattr(conn, "is_http2", False) or conn.parser is None:
        return False
    if conn.parser.unreader.buf.getvalue():
        return True  # read ahead with the last request's body
    poller = select.poll()
    poller.register(conn.sock, select.POLLIN)
    try:
        return bool(poller.poll(LINGER_S * 1000))
    except OSError:
        return False
