"""The gunicorn worker class trainserve runs: gthread, with request threads that stay on a busy connection.

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
"""

from __future__ import annotations

import select
import threading
from typing import Any

from gunicorn.workers import gthread

# How long a thread waits on its connection for the next request: a client that sends its next request
# as soon as it has an answer takes well under this; one that pauses goes back to the poller.
LINGER_S = 0.002


class ThreadWorker(gthread.ThreadWorker):
    """gthread, with a pool thread answering a busy connection's next requests itself."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._waiting = 0  # connections queued for a pool thread
        self._waiting_lock = threading.Lock()

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
