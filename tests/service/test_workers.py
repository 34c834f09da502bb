"""The worker class with a real gunicorn: a thread stays on a busy connection, but never starves another;
connections spread over the workers; a response leaves in one send."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from bench_serve import worker_connections

from service.workers import COALESCE_BYTES, _OneWrite

BODY = json.dumps({"instances": [[0] * 784], "dtype": "uint8"}).encode()
PATH = "/v1/models/mnist-tiny:predict"
REQUEST = (f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           f"Content-Length: {len(BODY)}\r\n\r\n").encode() + BODY


def predict(conn: http.client.HTTPConnection) -> int:
    conn.request("POST", PATH, body=BODY, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    answer = json.loads(response.read())
    assert answer["predictions"][0]["label"]
    return response.status


@pytest.mark.slow
def test_one_thread_serves_a_busy_connection_and_a_second_one_in_turn(gunicorn, artifact_root):
    # One request thread and a client that keeps its connection busy: it pipelines many requests, so the
    # next one is always there to answer. The thread still hands the connection back as soon as another
    # connection waits, so a second client is answered long before the busy one is done.
    server = gunicorn({"TRAINSERVE_MODEL_DIR": str(artifact_root), "TRAINSERVE_WORKERS": "1",
                       "TRAINSERVE_THREADS": "1"})
    total = 400
    answered = [0]
    busy = socket.create_connection(("127.0.0.1", server.port), timeout=60)

    def receive() -> None:
        ok, tail = b"HTTP/1.1 200 OK", b""
        while answered[0] < total:
            chunk = busy.recv(1 << 20)
            if not chunk:
                return
            # The tail is shorter than the status line, so every match here is a new one.
            window = tail + chunk
            answered[0] += window.count(ok)
            tail = window[1 - len(ok):]

    threads = [threading.Thread(target=busy.sendall, args=(REQUEST * total,)),
               threading.Thread(target=receive)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while answered[0] < 2 and time.monotonic() < deadline:
            time.sleep(0.001)
        other = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        assert predict(other) == 200
        answered_meanwhile = answered[0]
        other.close()
        for t in threads:
            t.join(60)
    finally:
        busy.close()
    assert answered[0] == total
    assert answered_meanwhile < total // 2


@pytest.mark.slow
def test_pipelined_requests_on_one_connection_are_all_answered(gunicorn, artifact_root):
    # Two requests in one write: the second is already read into gunicorn's buffer with the first.
    server = gunicorn({"TRAINSERVE_MODEL_DIR": str(artifact_root), "TRAINSERVE_WORKERS": "1",
                       "TRAINSERVE_THREADS": "2"})
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(REQUEST * 2)
        received = b""
        while received.count(b"HTTP/1.1 200 OK") < 2 or not received.endswith(b"}]}"):
            chunk = sock.recv(65536)
            assert chunk, f"connection closed after {received!r}"
            received += chunk
    assert received.count(b"HTTP/1.1 200 OK") == 2


def _wait_for_both_workers(server) -> None:
    """Until both workers have loaded their models (each logs "serving"), and a moment for them to run."""
    deadline = time.monotonic() + 60
    while server.log.read_text().count("serving ") < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads connections from Linux's /proc")
def test_kept_alive_connections_spread_evenly_over_the_workers(gunicorn, artifact_root):
    # Both workers accept from one listening socket; left to the kernel, the worker that wakes first takes
    # whatever waits. Eight long-lived connections opened at once (as wrk or a proxy's pool opens them)
    # must end up four and four.
    server = gunicorn({"TRAINSERVE_MODEL_DIR": str(artifact_root), "TRAINSERVE_WORKERS": "2",
                       "TRAINSERVE_THREADS": "4", "TRAINSERVE_LOG_LEVEL": "info"})
    _wait_for_both_workers(server)
    clients = [http.client.HTTPConnection("127.0.0.1", server.port, timeout=30) for _ in range(8)]
    try:
        for client in clients:
            client.connect()  # all eight wait in the listening socket's queue before any is accepted
        for client in clients:
            assert predict(client) == 200  # the connection stays open (keep-alive)
        assert worker_connections(server.proc.pid, server.port) == [4, 4]
    finally:
        for client in clients:
            client.close()


@pytest.mark.slow
def test_a_stuck_worker_does_not_hold_new_connections_back(gunicorn, artifact_root):
    # The worker with more connections leaves new ones to a sibling for a few milliseconds at most: with the
    # sibling frozen (SIGSTOP), every new connection is still accepted and answered by the other worker.
    server = gunicorn({"TRAINSERVE_MODEL_DIR": str(artifact_root), "TRAINSERVE_WORKERS": "2",
                       "TRAINSERVE_THREADS": "4", "TRAINSERVE_LOG_LEVEL": "info"})
    _wait_for_both_workers(server)
    master = server.proc.pid
    frozen = int(Path(f"/proc/{master}/task/{master}/children").read_text().split()[0])
    clients = [http.client.HTTPConnection("127.0.0.1", server.port, timeout=10) for _ in range(6)]
    os.kill(frozen, signal.SIGSTOP)
    try:
        started = time.monotonic()
        for client in clients:
            assert predict(client) == 200
        elapsed = time.monotonic() - started
    finally:
        os.kill(frozen, signal.SIGCONT)
        for client in clients:
            client.close()
    assert elapsed < 5


def _pending(sock: socket.socket) -> bytes:
    """What has arrived at ``sock`` so far, without waiting."""
    sock.setblocking(False)
    try:
        return sock.recv(1 << 20)
    except BlockingIOError:
        return b""
    finally:
        sock.setblocking(True)


def test_headers_wait_for_the_body_and_leave_with_it_in_one_send():
    server, client = socket.socketpair()
    with server, client:
        out = _OneWrite(server)
        out.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
        assert _pending(client) == b""  # held back
        out.sendall(b"{}")
        # One send: a single read takes the whole response (a stream socket keeps one write together).
        assert _pending(client) == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
        out.sendall(b"more")  # later writes go straight through
        assert _pending(client) == b"more"
        out.flush()  # nothing held: nothing sent
        assert _pending(client) == b""


def test_anything_else_done_with_the_socket_sends_the_held_headers_first():
    server, client = socket.socketpair()
    with server, client:
        out = _OneWrite(server)
        out.sendall(b"head;")
        out.send(b"tail")  # as gunicorn's sendfile() would write after the headers
        assert client.recv(100) + _pending(client) == b"head;tail"
        assert out.fileno() == server.fileno()


def test_a_response_without_body_bytes_is_sent_by_flush_and_a_large_body_follows_its_headers():
    server, client = socket.socketpair()
    with server, client:
        out = _OneWrite(server)
        out.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
        out.flush()
        assert _pending(client) == b"HTTP/1.1 204 No Content\r\n\r\n"

        body = bytes(range(256)) * (COALESCE_BYTES // 256 + 1)  # over the size copied into one buffer
        out = _OneWrite(server)
        received = bytearray()
        reader = threading.Thread(target=lambda: received.extend(_read_exactly(client, 5 + len(body))))
        reader.start()
        out.sendall(b"head;")
        out.sendall(body)
        reader.join(10)
        assert bytes(received) == b"head;" + body


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size and (chunk := sock.recv(size - len(data))):
        data += chunk
    return data


@pytest.mark.slow
def test_head_requests_and_100_continue_are_answered_in_order(gunicorn, artifact_root):
    # HEAD: headers only, sent when the request ends. "Expect: 100-continue": gunicorn's interim answer
    # goes out before the final response, which follows once the body has been sent.
    server = gunicorn({"TRAINSERVE_MODEL_DIR": str(artifact_root), "TRAINSERVE_WORKERS": "1",
                       "TRAINSERVE_THREADS": "2"})
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"HEAD /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        head = _read_until(sock, b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"Content-Length: 13\r\n" in head

        sock.sendall(REQUEST.split(b"\r\n\r\n")[0] + b"\r\nExpect: 100-continue\r\n\r\n")
        assert _read_until(sock, b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(BODY)
        answer = _read_until(sock, b"}]}")
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and b'"label"' in answer


def _read_until(sock: socket.socket, end: bytes) -> bytes:
    data = b""
    while not data.endswith(end):
        chunk = sock.recv(1)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    return data
