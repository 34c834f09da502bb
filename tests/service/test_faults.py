"""Faults the whole service must ride out, on each front end: slow and stalled clients, images made to
exhaust memory, overload, and an artifact corrupted on disk while the service runs. Bounded in count and
time, on 127.0.0.1 only."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import signal
import socket
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from service.web import imaging

pytestmark = pytest.mark.slow

ZERO = {"instances": [[0] * 784], "dtype": "uint8"}


def _processes(server) -> tuple[int, list[int]]:
    """The runtime's pid and the HTTP workers' pids of a running service."""
    (runtime,), workers = server.runtime_pids(), server.worker_pids()
    assert workers
    return runtime, workers


def _status_kib(pid: int, field: str) -> int:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith(field))
    return int(line.split()[1])


# --- slow clients ----------------------------------------------------------------------------------------
class SlowClients:
    """Connections that trickle headers, upload a body slowly, or send nothing, until stopped. Each would
    hold a request thread of the front end while it lasts."""

    def __init__(self, port: int, each: int) -> None:
        self.stop = threading.Event()
        self.closed: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(port, mode), daemon=True)
                        for mode in ("headers", "upload", "idle") for _ in range(each)]
        for thread in self.threads:
            thread.start()

    def _run(self, port: int, mode: str) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.settimeout(0.25)
            if mode == "headers":
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            elif mode == "upload":  # 4 MiB at 64 KiB/s: a minute, far past the request deadline
                sock.sendall(b"POST /v1/models/mnist-tiny:classify HTTP/1.1\r\nHost: x\r\n"
                             b"Content-Type: image/png\r\nContent-Length: 4194304\r\n\r\n")
            while not self.stop.is_set():
                try:
                    if not sock.recv(4096):
                        break  # the server closed it
                except (TimeoutError, BlockingIOError):
                    pass
                except OSError:
                    break  # reset by the server (it closed with our unread bytes)
                try:
                    if mode != "idle":
                        sock.sendall(b"X-Slow: 1\r\n" if mode == "headers" else bytes(16384))
                except OSError:
                    break
            else:
                return
            self.closed.append(mode)

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=10)


def _count(url: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    text = requests.get(f"{url}/metrics", timeout=10).text
    name = f"trainserve_requests_total{{{wanted}}} "
    line = next((x for x in text.splitlines() if x.startswith(name)), None)
    return float(line.split()[1]) if line else 0.0


def test_slow_and_stalled_clients_do_not_starve_health_checks_or_predictions(serve, artifact_root, mnist):
    server = serve({"TRAINSERVE_MODEL_DIR": str(artifact_root), "TRAINSERVE_WORKERS": "2",
                    "TRAINSERVE_THREADS": "256", "TRAINSERVE_REQUEST_TIMEOUT_S": "3"})
    png = io.BytesIO()
    Image.fromarray(mnist["test_x"][0]).save(png, format="PNG")
    slow = SlowClients(server.port, each=40)  # 120 connections that would each hold a thread
    try:
        time.sleep(1.0)  # let them connect and start first (the outcome does not depend on it)
        for _ in range(5):
            assert requests.get(f"{server.url}/healthz", timeout=10).status_code == 200
            answer = requests.post(f"{server.url}/v1/models/mnist-tiny:classify", data=png.getvalue(),
                                   headers={"Content-Type": "image/png"}, timeout=10)
            assert answer.status_code == 200
            assert answer.json()["predictions"][0]["label"] == str(mnist["test_y"][0])
        deadline = time.monotonic() + 60  # uploads still arriving at the request deadline are refused
        while slow.closed.count("upload") < 40 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        slow.close()
    assert slow.closed.count("upload") == 40
    labels = {"endpoint": "v1.classify", "model": "", "status": "408"}
    assert _count(server.url, **labels) == 40


# --- memory ----------------------------------------------------------------------------------------------
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int, height: int, colour: int = 0) -> bytes:
    """A valid PNG of ``width`` x ``height`` zero pixels, written row by row (never held whole)."""
    channels = {0: 1, 2: 3, 6: 4}[colour]
    packer, row, idat = zlib.compressobj(9), b"\x00" * (1 + width * channels), []
    for _ in range(height):
        idat.append(packer.compress(row))
    idat.append(packer.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", b"".join(idat))
            + _png_chunk(b"IEND", b""))


def _encoded(pixels: np.ndarray, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _stroke(shape: tuple[int, ...]) -> np.ndarray:
    pixels = np.zeros(shape, np.uint8)
    pixels[shape[0] // 4:shape[0] // 2, shape[1] // 3:shape[1] // 2] = 255
    return pixels


def test_no_single_request_raises_a_workers_memory_by_more_than_64_mib(serve, artifact_root):
    server = serve({"TRAINSERVE_MODEL_DIR": str(artifact_root), "TRAINSERVE_WORKERS": "1"})
    url = f"{server.url}/v1/models/mnist-tiny:classify"
    side = int((imaging.MAX_DECODED_BYTES / 4) ** 0.5) - 64
    transparent = _stroke((side // 2, side // 2, 2))
    transparent[..., 1] = 255
    cases = {  # name: (body, the status it gets)
        "400-megapixel grey bomb": (png_bomb(20000, 20000), 413),
        "RGBA over the decoded budget": (png_bomb(side, side, colour=6), 413),
        "RGB over the decoded budget": (png_bomb(side, side, colour=2), 413),
        "grey within the budget": (_encoded(_stroke((side, side)), "PNG"), 200),
        "transparent (LA) within the budget": (_encoded(transparent, "PNG"), 200),
        "tRNS palette image": (_encoded(_stroke((1500, 1500)), "PNG", transparency=0), 200),
        "24-megapixel JPEG photo": (_encoded(_stroke((6000, 4000, 3)), "JPEG", quality=70), 200),
    }
    rows = (3 * 2**20 - 100) // 3138  # a row is [0.5,0.5,...], 3,138 bytes: just under the JSON limit
    floats = ("[" + ",".join(["[" + ",".join(["0.5"] * 784) + "]"] * rows) + "]").encode()
    tensors = np.full((15 * 2**20 // 3136, 1, 28, 28), 0.5, np.float32).tobytes()  # 15 MiB, binary
    header = (b'{"inputs": [{"name": "input", "shape": [%d, 1, 28, 28], "datatype": "FP32", '
              b'"parameters": {"binary_data_size": %d}}]}' % (len(tensors) // 3136, len(tensors)))
    posts = {  # name: (path, headers, body, the status it gets)
        "JSON of floats at the JSON limit": ("/v1/models/mnist-tiny:predict", {}, b'{"instances": '
                                             + floats + b', "dtype": "float32"}', 200),
        "JSON over the JSON limit": ("/v1/models/mnist-tiny:predict", {}, b'{"instances": ' + floats
                                     + b"," + floats[1:] + b', "dtype": "float32"}', 413),
        "binary FP32 tensors at the body limit": ("/v2/models/mnist-tiny/infer",
                                                  {"Inference-Header-Content-Length": str(len(header))},
                                                  header + tensors, 200),
    }
    _, (worker,) = _processes(server)
    for _ in range(3):  # warm: first requests import and allocate what every later one reuses
        requests.post(url, data=cases["grey within the budget"][0], timeout=60)
    for name, (path, headers, body, status) in posts.items():
        idle = _status_kib(worker, "VmRSS")
        Path(f"/proc/{worker}/clear_refs").write_text("5")
        answer = requests.post(f"{server.url}{path}", data=body, headers=headers, timeout=120)
        assert answer.status_code == status, (name, answer.text[:200])
        peak = _status_kib(worker, "VmHWM")
        assert peak - idle <= 64 * 1024, f"{name}: +{(peak - idle) / 1024:.0f} MiB"
    for name, (body, status) in cases.items():
        idle = _status_kib(worker, "VmRSS")
        Path(f"/proc/{worker}/clear_refs").write_text("5")  # the peak RSS starts again from now
        answer = requests.post(url, data=body, headers={"Content-Type": "image/png"}, timeout=60)
        assert answer.status_code == status, (name, answer.text)
        assert "error" in answer.json() if status != 200 else "predictions" in answer.json()
        peak = _status_kib(worker, "VmHWM")
        assert peak - idle <= 64 * 1024, f"{name}: +{(peak - idle) / 1024:.0f} MiB"
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:  # a 1 TiB length
        sock.sendall(b"POST /v1/models/mnist-tiny:classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png"
                     b"\r\nConnection: close\r\nContent-Length: 1099511627776\r\n\r\n" + bytes(100))
        received = b""
        while b"}" not in received and (chunk := sock.recv(4096)):
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413") and b"the limit is" in body
    assert _status_kib(worker, "VmHWM") - idle <= 64 * 1024  # never allocated


# --- overload --------------------------------------------------------------------------------------------
def test_overload_is_shed_at_once_with_429_and_retry_after(serve, special_root):
    server = serve({"TRAINSERVE_MODEL_DIR": str(special_root), "TRAINSERVE_WORKERS": "1",
                    "TRAINSERVE_THREADS": "32", "TRAINSERVE_MAX_QUEUE": "2",
                    "TRAINSERVE_MAX_BATCH_SIZE": "1",
                    # the admitted ones wait for passes of ~0.3 s, longer on a loaded machine: never 504
                    "TRAINSERVE_REQUEST_TIMEOUT_S": "60", "TRAINSERVE_MAX_QUEUE_WAIT_MS": "60000"})
    url = f"{server.url}/v1/models/slow:predict"
    runtime, _ = _processes(server)
    os.kill(runtime, signal.SIGSTOP)  # requests pile up, none is read yet
    try:
        with ThreadPoolExecutor(10) as pool:
            pending = [pool.submit(requests.post, url, json=ZERO, timeout=60) for _ in range(10)]
            # Each request either waits in the worker or is refused already: the event-loop door holds two
            # segments at the runtime and two requests in the worker, and refuses the rest at once; the
            # thread door sends all ten to the runtime's socket.
            deadline = time.monotonic() + 60
            while server.in_flight() - 1 + sum(f.done() for f in pending) < 10:
                assert time.monotonic() < deadline, "the requests never reached the worker"
                time.sleep(0.05)
            os.kill(runtime, signal.SIGCONT)  # it reads what it was sent at once: two fit the queue
            answers = [f.result(60) for f in pending]
    finally:
        os.kill(runtime, signal.SIGCONT)
    statuses = sorted(a.status_code for a in answers)
    assert set(statuses) <= {200, 429} and 200 in statuses and statuses.count(429) >= 5, statuses
    for answer in answers:
        if answer.status_code == 429:
            assert answer.headers["Retry-After"] == "1" and "queue" in answer.json()["error"]
    assert requests.post(url, json=ZERO, timeout=60).status_code == 200  # and it serves on


# --- artifacts -------------------------------------------------------------------------------------------
def test_an_artifact_corrupted_while_serving_does_not_take_the_healthy_ones_down(serve, artifact_root,
                                                                                tmp_path):
    models = tmp_path / "models"
    shutil.copytree(artifact_root / "mnist-tiny", models / "mnist-tiny")
    server = serve({"TRAINSERVE_MODEL_DIR": str(models), "TRAINSERVE_WORKERS": "1"})
    latest = f"{server.url}/v1/models/mnist-tiny:predict"
    assert requests.post(latest, json=ZERO, timeout=30).json()["version"] == "2"
    with (models / "mnist-tiny" / "2" / "model.pt").open("r+b") as fh:  # bit rot under a running service
        fh.seek(100)
        fh.write(b"corrupted")
    runtime, _ = _processes(server)
    os.kill(runtime, signal.SIGKILL)  # the restarted runtime verifies every artifact again
    server.wait_ready()
    answer = requests.post(latest, json=ZERO, timeout=30)
    assert answer.status_code == 200 and answer.json()["version"] == "1"
    gone = requests.post(f"{server.url}/v1/models/mnist-tiny/versions/2:predict", json=ZERO, timeout=30)
    assert gone.status_code == 404 and "error" in gone.json()
    assert re.search(r"refused artifact \S*mnist-tiny/2", server.log.read_text())


# --- malformed HTTP --------------------------------------------------------------------------------------
MALFORMED = {  # what each front end answers itself, before the app runs
    "a Content-Length that is no number": (b"POST /v1/models/mnist-tiny:classify HTTP/1.1\r\nHost: x\r\n"
                                           b"Content-Length: abc\r\n\r\n", 400),
    "two Content-Lengths": (b"POST /v1/models/mnist-tiny:classify HTTP/1.1\r\nHost: x\r\nContent-Length: 3"
                            b"\r\nContent-Length: 5\r\n\r\nabc", 400),
    "a 600 KB header": (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 600_000 + b"\r\n\r\n", 431),
    "a 100 KB URI": (b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    "TLS on the plain port": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64) + b"\r\n\r\n", 400),
}


def test_malformed_http_gets_its_4xx_from_the_front_end_and_the_service_serves_on(serve, artifact_root):
    server = serve({"TRAINSERVE_MODEL_DIR": str(artifact_root), "TRAINSERVE_WORKERS": "1"})
    for name, (raw, status) in MALFORMED.items():
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            with contextlib.suppress(ConnectionResetError):  # it may answer and close before reading it all
                sock.sendall(raw)
            head = sock.recv(4096)
        assert head.startswith(f"HTTP/1.1 {status} ".encode()), (name, head[:200])
    served = requests.post(f"{server.url}/v1/models/mnist-tiny:predict", json=ZERO, timeout=30)
    assert served.status_code == 200


@pytest.mark.parametrize("path", ["/v1/models/mnist-tiny:classify", "/v1/models/mnist-tiny:classify?top_k=1"],
                         ids=["hot route", "Flask route"])
def test_a_stalled_upload_is_answered_408_at_the_deadline(serve, artifact_root, path):
    server = serve({"TRAINSERVE_MODEL_DIR": str(artifact_root), "TRAINSERVE_WORKERS": "1",
                    "TRAINSERVE_REQUEST_TIMEOUT_S": "2"})
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n".encode()
                     + b"Content-Length: 1000\r\n\r\n" + bytes(10))  # ... and then nothing
        received = b""
        while b"}" not in received and (chunk := sock.recv(4096)):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408") and b"not received within the request deadline of 2 s" in body


# --- runtimes --------------------------------------------------------------------------------------------
def test_with_two_runtimes_a_killed_one_costs_no_request_and_no_readiness(serve, artifact_root):
    server = serve({"TRAINSERVE_MODEL_DIR": str(artifact_root), "TRAINSERVE_WORKERS": "1",
                    "TRAINSERVE_RUNTIMES": "2"})
    url = f"{server.url}/v1/models/mnist-tiny:predict"
    runtimes = server.runtime_pids()
    assert len(runtimes) == 2
    with ThreadPoolExecutor(4) as pool:
        assert all(r.status_code == 200 for r in pool.map(lambda _: requests.post(url, json=ZERO, timeout=30),
                                                          range(8)))  # both runtimes have connections
        os.kill(runtimes[0], signal.SIGKILL)
        answers = list(pool.map(lambda _: requests.post(url, json=ZERO, timeout=30), range(16)))
        assert requests.get(f"{server.url}/readyz", timeout=30).status_code == 200
    assert [a.status_code for a in answers] == [200] * 16
    deadline = time.monotonic() + 120  # and the lost one is started again
    while "restarting in" not in server.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "restarting in" in server.log.read_text()
