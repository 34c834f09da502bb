"""Overload and deadlines through the gRPC door, decided by the service rather than the client: with the
runtime stopped, calls beyond what the queues hold are refused with RESOURCE_EXHAUSTED and a retry-after
trailer, and a call whose server-side deadline (TRAINSERVE_REQUEST_TIMEOUT_S) passes gets DEADLINE_EXCEEDED
from the service, with its text, long before the client's own deadline. The service serves on after both.

The calls use tritonclient's own generated stubs: the product's stubs register the same protobuf names, and
one process can hold only one of them."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest
import requests

pytestmark = pytest.mark.slow
grpc = pytest.importorskip("grpc")
service_pb2 = pytest.importorskip("tritonclient.grpc.service_pb2")
from tritonclient.grpc import service_pb2_grpc  # noqa: E402

CALLS = 10


@pytest.fixture
def server_name() -> str:
    """The gRPC front end is its own process, the same whichever HTTP front end runs beside it."""
    return "granian"


def _request() -> object:
    request = service_pb2.ModelInferRequest(model_name="slow")
    request.inputs.add(name="input", datatype="UINT8", shape=[1, 784])
    request.raw_input_contents.append(bytes(784))
    return request


def _grpc_answers(url: str, code: int, expected: float) -> float:
    """ModelInfer answers the service counted with this HTTP-equivalent status, over gRPC, once they reach
    ``expected`` or 30 s have passed (a front end writes a loop turn's counts just after its answers)."""
    deadline = time.monotonic() + 30
    while True:
        text = requests.get(f"{url}/metrics", timeout=30).text
        counted = sum(float(v) for v in re.findall(
            rf'^trainserve_requests_total\{{(?=[^}}]*endpoint="v2.infer")(?=[^}}]*protocol="grpc")'
            rf'(?=[^}}]*status="{code}")[^}}]*\}} (\S+)$', text, re.M))
        if counted >= expected or time.monotonic() > deadline:
            return counted
        time.sleep(0.05)


def test_a_full_queue_is_refused_at_once_and_a_passed_deadline_is_the_services(serve, special_root):
    server = serve({"TRAINSERVE_MODEL_DIR": str(special_root), "TRAINSERVE_WORKERS": "1",
                    "TRAINSERVE_MAX_QUEUE": "2", "TRAINSERVE_MAX_BATCH_SIZE": "1",
                    "TRAINSERVE_REQUEST_TIMEOUT_S": "60", "TRAINSERVE_MAX_QUEUE_WAIT_MS": "60000"})
    (runtime,) = server.runtime_pids()
    with grpc.insecure_channel(server.grpc) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        os.kill(runtime, signal.SIGSTOP)  # calls pile up in the gRPC front end, none is read yet
        try:
            calls = [stub.ModelInfer.future(_request(), timeout=120) for _ in range(CALLS)]
            server.wait_in_flight(CALLS - sum(call.done() for call in calls))
        finally:
            os.kill(runtime, signal.SIGCONT)
        refused = []
        for call in calls:
            try:
                call.result()
            except grpc.RpcError as error:
                refused.append(error)
    assert len(refused) >= CALLS // 2, [e.details() for e in refused]
    for error in refused:
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "queue" in error.details()
        assert dict(error.trailing_metadata())["retry-after"] == "1"
    assert _grpc_answers(server.url, 429, len(refused)) == len(refused)

    # A deadline of the service's own: 2 s, while the runtime is stopped; the client would wait 120 s.
    short = serve({"TRAINSERVE_MODEL_DIR": str(special_root), "TRAINSERVE_WORKERS": "1",
                   "TRAINSERVE_REQUEST_TIMEOUT_S": "2"})
    (runtime,) = short.runtime_pids()
    with grpc.insecure_channel(short.grpc) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ModelInfer(_request(), timeout=120).model_name == "slow"  # connected to the runtime
        os.kill(runtime, signal.SIGSTOP)
        try:
            with pytest.raises(grpc.RpcError) as caught:
                stub.ModelInfer(_request(), timeout=120)
        finally:
            os.kill(runtime, signal.SIGCONT)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert caught.value.details() == "model slow/1 did not answer before the request deadline"
        assert _grpc_answers(short.url, 504, 1) == 1
        assert stub.ModelInfer(_request(), timeout=120).model_name == "slow"  # and it serves on
