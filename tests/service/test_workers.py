"""The worker class with a real gunicorn: a thread stays on a busy connection, but never starves another."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest

pytestmark = pytest.mark.slow

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
