"""The gRPC door under traffic, on a deliberately slow model: HTTP and gRPC requests that wait together land
in one batch (the runtime's batch-size histogram shows it); a gRPC process that dies is started again; and
SIGTERM drains a stream in flight while new calls are refused with UNAVAILABLE."""

from __future__ import annotations

import os
import queue
import re
import signal
import threading
import time

import numpy as np
import pytest
import requests

pytestmark = pytest.mark.slow
tritongrpc = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

HTTP_ROWS, GRPC_ROWS = 5, 4  # only a batch with both holds more than 8 images (1 + 5 or 1 + 4 do not)


@pytest.fixture(scope="module")
def service(tmp_path_factory, special_root, service_class):
    env = {"TRAINSERVE_MODEL_DIR": str(special_root), "TRAINSERVE_WORKERS": "1",
           "TRAINSERVE_GRACEFUL_TIMEOUT_S": "30", "TRAINSERVE_REQUEST_TIMEOUT_S": "60"}
    started = service_class(env, tmp_path_factory.mktemp("grpc-traffic"), "granian")
    try:
        started.wait_ready(timeout=180)
        yield started
    finally:
        started.stop()


def _input(rows: int):
    tensor = tritongrpc.InferInput("input", [rows, 784], "UINT8")
    tensor.set_data_from_numpy(np.full((rows, 784), 9, np.uint8))
    return tensor


def _batches_over_8(url: str) -> float:
    """Batches of the slow model that held more than 8 images, from the runtime's histogram."""
    text = requests.get(f"{url}/metrics", timeout=30).text
    counts = {le: float(v) for le, v in re.findall(
        r'^trainserve_batch_size_images_bucket\{le="([0-9.+Inf]+)",model="slow",version="1"\} (\S+)$', text,
        re.M)}
    return counts.get("+Inf", 0.0) - counts.get("8.0", 0.0)


def _post(url: str, body: dict) -> str | None:
    answer = requests.post(f"{url}/v2/models/slow/infer", json=body, timeout=60)
    return None if answer.status_code == 200 else f"{answer.status_code} {answer.text}"


def test_http_and_grpc_requests_share_a_batch(service):
    client = tritongrpc.InferenceServerClient(service.grpc)
    body = {"inputs": [{"name": "input", "shape": [HTTP_ROWS, 784], "datatype": "UINT8",
                        "data": [9] * (HTTP_ROWS * 784)}]}
    before = _batches_over_8(service.url)
    done: queue.Queue = queue.Queue()  # each request's error, or None
    errors: list[str] = []
    try:
        for _ in range(5):  # a round: the model busy with one image, then an HTTP and a gRPC request wait
            client.async_infer("slow", [_input(1)], callback=lambda result, error: done.put(error))
            http = threading.Thread(target=lambda: done.put(_post(service.url, body)))
            http.start()
            client.async_infer("slow", [_input(GRPC_ROWS)], callback=lambda result, error: done.put(error))
            # A loaded machine may shed a request (429, RESOURCE_EXHAUSTED: the slow model's queue could not
            # start it in time); that round proves nothing, the next one may.
            errors += [str(e) for e in (done.get(timeout=120) for _ in range(3)) if e is not None]
            http.join(timeout=60)
            if _batches_over_8(service.url) > before:
                break
    finally:
        client.close()
    assert _batches_over_8(service.url) > before, f"no batch held both an HTTP and a gRPC request: {errors}"
    assert all("429" in e or "RESOURCE_EXHAUSTED" in e for e in errors), errors


def test_a_grpc_front_end_that_dies_is_started_again(service):
    (old,) = service.grpc_pids()
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 90
    back = False
    while not back and time.monotonic() < deadline:
        client = tritongrpc.InferenceServerClient(service.grpc)
        try:
            back = client.is_server_ready(client_timeout=5)
        except InferenceServerException:
            pass  # not listening yet
        finally:
            client.close()
        if not back:
            time.sleep(0.2)
    assert back and service.grpc_pids() and old not in service.grpc_pids()
    assert requests.get(f"{service.url}/readyz", timeout=30).status_code == 200


def test_sigterm_drains_a_stream_in_flight_and_refuses_new_calls(service):
    client = tritongrpc.InferenceServerClient(service.grpc)
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        client.async_stream_infer("slow", [_input(1)], request_id="before")
        first = answers.get(timeout=120)
        assert first[1] is None
        service.proc.send_signal(signal.SIGTERM)
        for n in range(4):  # the call is in flight: its requests are still answered
            client.async_stream_infer("slow", [_input(1)], request_id=f"during-{n}")
        during = [answers.get(timeout=120) for _ in range(4)]
        refused = None
        other = tritongrpc.InferenceServerClient(service.grpc)
        try:
            deadline = time.monotonic() + 60
            while refused is None and time.monotonic() < deadline:
                try:
                    other.is_server_live(client_timeout=5)
                    time.sleep(0.05)
                except InferenceServerException as exc:
                    refused = exc.status()
        finally:
            other.close()
    finally:
        client.stop_stream()
        client.close()
    assert [(r.get_response().id, e) for r, e in during] == [(f"during-{n}", None) for n in range(4)]
    assert refused == "StatusCode.UNAVAILABLE"
    assert service.proc.wait(timeout=90) == 0
