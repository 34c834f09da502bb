"""The gRPC door (service/grpc) over the whole service, with the real clients, unmodified: tritonclient.grpc
for every call, async_infer, the stream and compression; each error and its status code; the request id;
server reflection without the proto files; the health service. KServe's InferenceGRPCClient runs in a
process of its own (it registers the same protobuf names as tritonclient.grpc: one of them per process)."""

from __future__ import annotations

import importlib.util
import json
import queue
import subprocess
import sys
import textwrap
import time

import grpc
import numpy as np
import pytest
import requests

pytestmark = pytest.mark.slow
tritongrpc = pytest.importorskip("tritonclient.grpc")
from tritonclient.grpc import service_pb2  # noqa: E402  (after the skip: the client's own stubs)
from tritonclient.utils import InferenceServerException  # noqa: E402

TOKEN = "management-token-for-tests-42"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def service(tmp_path_factory, artifact_root, service_class):
    """One service for the module: small limits so that the limit cases stay small."""
    env = {"TRAINSERVE_MODEL_DIR": str(artifact_root), "TRAINSERVE_WORKERS": "1",
           "TRAINSERVE_MANAGEMENT_TOKEN": TOKEN, "TRAINSERVE_MAX_REQUEST_BYTES": str(256 * 1024)}
    started = service_class(env, tmp_path_factory.mktemp("grpc"), "granian")
    try:
        started.wait_ready()
        yield started
    finally:
        started.stop()


@pytest.fixture
def client(service):
    c = tritongrpc.InferenceServerClient(service.grpc)
    yield c
    c.close()


def _input(x: np.ndarray, datatype: str = "UINT8"):
    tensor = tritongrpc.InferInput("input", list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    return tensor


def _code(call, *args, **kwargs) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as caught:
        call(*args, **kwargs)
    return caught.value.status(), caught.value.message()


def test_health_metadata_configuration_and_statistics(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("mnist-tiny") and client.is_model_ready("mnist-tiny", "1")
    assert not client.is_model_ready("nope") and not client.is_model_ready("mnist-tiny", "9")
    server = client.get_server_metadata()
    assert server.name == "trainserve" and "classification" in server.extensions
    meta = client.get_model_metadata("mnist-tiny")
    assert meta.versions == ["1", "2"] and meta.inputs[0].name == "input"
    assert list(meta.inputs[0].shape) == [-1, 1, 28, 28]
    assert [o.name for o in meta.outputs] == ["logits", "probabilities", "label"]
    config = client.get_model_config("mnist-tiny").config
    assert config.max_batch_size == 64 and list(config.input[0].dims) == [1, 28, 28]
    before = client.get_inference_statistics("mnist-tiny", "2").model_stats[0]
    client.infer("mnist-tiny", [_input(np.zeros((3, 784), np.uint8))])
    after = client.get_inference_statistics("mnist-tiny", "2").model_stats[0]
    assert after.inference_count - before.inference_count == 3
    assert after.inference_stats.success.count - before.inference_stats.success.count == 1
    every = client.get_inference_statistics().model_stats
    assert {(s.name, s.version) for s in every} == {("mnist-tiny", "1"), ("mnist-tiny", "2")}


def test_repository_index_and_control_need_the_token_in_call_metadata(client):
    assert _code(client.get_model_repository_index) == ("StatusCode.UNAUTHENTICATED",
                                                        "the model repository API needs an Authorization: "
                                                        "Bearer <token> header")
    assert _code(client.get_model_repository_index, headers={"authorization": "Bearer wrong-token"})[0] == \
        "StatusCode.PERMISSION_DENIED"
    index = client.get_model_repository_index(headers=AUTH).models
    assert {(m.name, m.version): m.state for m in index} == {
        ("mnist-tiny", "1"): "READY", ("mnist-tiny", "2"): "READY", ("tampered", "1"): "UNAVAILABLE"}
    for call in (client.load_model, client.unload_model):
        code, message = _code(call, "mnist-tiny", headers=AUTH)
        assert code == "StatusCode.FAILED_PRECONDITION" and message.startswith("model control is 'poll'")
    assert _code(client.load_model, "../models", headers=AUTH)[0] == "StatusCode.NOT_FOUND"


def test_raw_and_typed_contents_give_the_same_answer(client, mnist):
    x = mnist["test_x"][:8].reshape(8, 784)
    raw = client.infer("mnist-tiny", [_input(x)])
    request = service_pb2.ModelInferRequest(model_name="mnist-tiny", id="typed-1")
    tensor = request.inputs.add(name="input", datatype="UINT8", shape=[8, 784])
    tensor.contents.uint_contents.extend(x.ravel().tolist())
    typed = client._client_stub.ModelInfer(request)
    assert typed.id == "typed-1" and [o.name for o in typed.outputs] == ["logits", "probabilities", "label"]
    logits = np.frombuffer(typed.raw_output_contents[0], np.float32).reshape(8, 10)
    assert np.array_equal(logits, raw.as_numpy("logits"))
    assert (raw.as_numpy("label").astype(int) == mnist["test_y"][:8]).mean() >= 0.75


@pytest.mark.parametrize("datatype", ["FP16", "FP32", "FP64", "INT64", "INT32", "UINT16"])
def test_every_datatype_rest_takes(client, mnist, datatype):
    x = mnist["test_x"][:8].reshape(8, 784)
    values = (x / 255 if datatype.startswith("FP") else x).astype(datatype.replace("FP", "float")
                                                                   .replace("INT", "int").lower())
    expected = client.infer("mnist-tiny", [_input(x)]).as_numpy("label")
    got = client.infer("mnist-tiny", [_input(values, datatype)]).as_numpy("label")
    assert got.tolist() == expected.tolist()


def test_classification_async_infer_gzip_and_the_stream(client, mnist):
    x = mnist["test_x"][:4].reshape(4, 1, 28, 28)
    top = client.infer("mnist-tiny", [_input(x)],
                       outputs=[tritongrpc.InferRequestedOutput("probabilities", class_count=3)])
    assert top.as_numpy("probabilities").shape == (4, 3)
    assert [int(s.split(b":")[1]) for s in top.as_numpy("probabilities")[:, 0]] == \
        client.infer("mnist-tiny", [_input(x)]).as_numpy("logits").argmax(1).tolist()
    done: queue.Queue = queue.Queue()
    client.async_infer("mnist-tiny", [_input(x)], callback=lambda result, error: done.put((result, error)))
    result, error = done.get(timeout=60)
    assert error is None and result.as_numpy("label").shape == (4,)
    zipped = client.infer("mnist-tiny", [_input(x)], compression_algorithm="gzip")
    assert zipped.as_numpy("label").tolist() == result.as_numpy("label").tolist()
    bad = _input(np.zeros((1, 783), np.uint8))
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for n in range(6):
            client.async_stream_infer("mnist-tiny", [bad if n == 3 else _input(x[n % 4:n % 4 + 1])],
                                      request_id=f"s{n}")
        got = [answers.get(timeout=60) for _ in range(6)]
    finally:
        client.stop_stream()
    assert [r.get_response().id if r else None for r, _ in got] == ["s0", "s1", "s2", None, "s4", "s5"]
    assert "shape [1, 783] is not accepted" in str(got[3][1])


def test_each_error_has_its_status_code_and_the_rest_text(service, client):
    x = np.zeros((1, 784), np.uint8)
    cases = {
        "StatusCode.NOT_FOUND": lambda: client.infer("nope", [_input(x)]),
        "StatusCode.INVALID_ARGUMENT": lambda: client.infer("mnist-tiny",
                                                            [_input((x + 2).astype(np.float32), "FP32")]),
        "StatusCode.RESOURCE_EXHAUSTED": lambda: client.infer("mnist-tiny", [_input(np.zeros((400, 784),
                                                                                             np.uint8))]),
        "StatusCode.UNIMPLEMENTED": lambda: client.get_system_shared_memory_status(),
    }
    for code, call in cases.items():
        assert _code(call)[0] == code
    message = _code(client.infer, "mnist-tiny", [_input(x)],
                    outputs=[tritongrpc.InferRequestedOutput("nope")])[1]
    http = requests.post(f"{service.url}/v2/models/mnist-tiny/infer", timeout=30, json={
        "inputs": [{"name": "input", "shape": [1, 784], "datatype": "UINT8", "data": [0] * 784}],
        "outputs": [{"name": "nope"}]})
    assert http.status_code == 400 and message == http.json()["error"]


def test_the_request_id_is_echoed_or_made(client):
    request = service_pb2.ServerLiveRequest()
    _, call = client._client_stub.ServerLive.with_call(request, metadata=(("x-request-id", "find-me-9"),))
    assert dict(call.trailing_metadata())["x-request-id"] == "find-me-9"
    _, call = client._client_stub.ServerLive.with_call(request)
    assert len(dict(call.trailing_metadata())["x-request-id"]) == 32
    with pytest.raises(grpc.RpcError) as caught:
        client._client_stub.ModelMetadata(service_pb2.ModelMetadataRequest(name="nope"),
                                          metadata=(("x-request-id", "find-me-10"),))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert dict(caught.value.trailing_metadata())["x-request-id"] == "find-me-10"


def test_reflection_lists_the_services_and_methods_without_proto_files(service):
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(service.grpc) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        assert set(database.get_services()) == {"inference.GRPCInferenceService", "grpc.health.v1.Health",
                                                "grpc.reflection.v1alpha.ServerReflection"}
        found = DescriptorPool(database).FindServiceByName("inference.GRPCInferenceService")
        methods = {m.name: m for m in found.methods}
    assert {"ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
            "ModelStreamInfer", "ModelConfig", "ModelStatistics", "RepositoryIndex", "RepositoryModelLoad",
            "RepositoryModelUnload"} <= set(methods)
    assert methods["ModelInfer"].input_type.fields_by_name["raw_input_contents"].number == 7


def test_the_health_service_follows_readiness(service):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(service.grpc) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for name in ("", "inference.GRPCInferenceService", "liveness"):
            answer = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_kserve_grpc_client(service, mnist):
    if importlib.util.find_spec("kserve") is None:  # not imported here: see the module docstring
        pytest.skip("kserve is not installed (pip install kserve)")
    x = mnist["test_x"][:4].reshape(4, 784)
    script = textwrap.dedent("""
        import asyncio, json, sys
        import numpy as np
        from kserve import InferenceGRPCClient, InferInput, InferRequest

        async def run(target, x):
            client = InferenceGRPCClient(target, timeout=30)
            try:
                ready = [await client.is_server_ready(), await client.is_model_ready("mnist-tiny")]
                request = InferRequest("mnist-tiny", [InferInput("input", list(x.shape), "UINT8", x)],
                                       request_id="kserve-7")
                response = await client.infer(request)
                labels = {o.name: o for o in response.outputs}["label"].as_numpy()
                labels = [s.decode() if isinstance(s, bytes) else s for s in labels.tolist()]
                return ready, response.id, labels
            finally:
                await client.close()

        x = np.asarray(json.loads(sys.argv[2]), np.uint8)
        print(json.dumps(asyncio.run(run(sys.argv[1], x))))
    """)
    done = subprocess.run([sys.executable, "-c", script, service.grpc, json.dumps(x.tolist())],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    ready, answer_id, labels = json.loads(done.stdout)
    assert ready == [True, True] and answer_id == "kserve-7"
    assert (np.asarray(labels, int) == mnist["test_y"][:4]).mean() >= 0.75


def test_grpc_requests_are_counted_with_their_protocol(service, client):
    client.infer("mnist-tiny", [_input(np.zeros((1, 784), np.uint8))])
    deadline = time.monotonic() + 30  # a front end writes a loop turn's counts just after its answers
    while True:
        text = requests.get(f"{service.url}/metrics", timeout=30).text
        grpc_lines = [line for line in text.splitlines() if line.startswith("trainserve_requests_total{")
                      and 'protocol="grpc"' in line and 'endpoint="v2.infer"' in line
                      and 'status="200"' in line]
        if (grpc_lines and float(grpc_lines[0].split()[1]) >= 1) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert grpc_lines and float(grpc_lines[0].split()[1]) >= 1
    assert {line.split('protocol="')[1].split('"')[0] for line in text.splitlines()
            if line.startswith("trainserve_requests_total{")} <= {"http", "grpc"}


def _typed_request(document: dict) -> service_pb2.ModelInferRequest:
    """An OIP JSON body as a ModelInferRequest with typed contents (service/grpc/messages.py's fields)."""
    from service.grpc.messages import CONTENTS

    request = service_pb2.ModelInferRequest(model_name="mnist-tiny", id=document.get("id", ""))
    for given in document["inputs"]:
        tensor = request.inputs.add(name=given["name"], datatype=given["datatype"], shape=given["shape"])
        getattr(tensor.contents, CONTENTS[given["datatype"]]).extend(given["data"])
    for output in document.get("outputs", []):
        wanted = request.outputs.add(name=output["name"])
        for key, value in output.get("parameters", {}).items():
            wanted.parameters[key].int64_param = value
    return request


def _door_table() -> dict[str, dict]:
    """OIP requests, good and bad, that both doors take: name -> JSON body."""
    def body(shape, datatype="UINT8", data=None, name="input", **extra):
        count = int(np.prod(shape))
        return {"inputs": [{"name": name, "shape": shape, "datatype": datatype,
                            "data": data if data is not None else [3] * count}], **extra}

    return {
        "uint8": body([2, 784], id="t-1"),
        "fp32 image shape": body([1, 1, 28, 28], "FP32", [0.5] * 784),
        "classification": body([1, 784], outputs=[{"name": "probabilities",
                                                    "parameters": {"classification": 2}}]),
        "one output": body([1, 784], outputs=[{"name": "label"}]),
        "wrong shape": body([1, 783]),
        "wrong name": body([1, 784], name="pixels"),
        "out of range": body([1, 784], "FP32", [7.0] * 784),
        "unknown output": body([1, 784], outputs=[{"name": "nope"}]),
        "too many rows": body([65, 784]),
        "bad datatype": body([1, 784], "BOOL", [True] * 784),
        "int64": body([1, 784], "INT64"),
        "data short of the shape": body([2, 784], data=[3] * 784),
    }


GRPC_FOR_HTTP = {200: "OK", 400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 413: "RESOURCE_EXHAUSTED"}


def test_the_same_requests_get_the_same_answers_through_http_and_grpc(service, client):
    """Triton's way of proving its fronts equal: one table through both doors, answers compared."""
    for name, document in _door_table().items():
        http = requests.post(f"{service.url}/v2/models/mnist-tiny/infer", json=document, timeout=30)
        try:
            answer = client._client_stub.ModelInfer(_typed_request(document), timeout=30)
            code, message = "OK", ""
        except grpc.RpcError as exc:
            code, message, answer = exc.code().name, exc.details(), None
        assert GRPC_FOR_HTTP[http.status_code] == code, (name, http.text, message)
        if answer is None:
            assert message == http.json()["error"], name
            continue
        got = http.json()
        assert answer.id == got.get("id", ""), name
        assert [o.name for o in answer.outputs] == [o["name"] for o in got["outputs"]], name
        for output, raw in zip(got["outputs"], answer.raw_output_contents, strict=True):
            grpc_output = next(o for o in answer.outputs if o.name == output["name"])
            assert (grpc_output.datatype, list(grpc_output.shape)) == (output["datatype"], output["shape"])
            if output["datatype"] == "FP32":
                grpc_values = np.frombuffer(raw, np.float32)
                np.testing.assert_allclose(grpc_values, np.ravel(output["data"]), rtol=1e-6)


DATATYPES = ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32",
             "FP64", "BYTES", "BF16", "nonsense")
CLEAN = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED,
         grpc.StatusCode.NOT_FOUND}


def test_fuzzed_model_infer_requests_get_ok_or_a_clean_status(service, client):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    shapes = st.lists(st.integers(-2, 900), min_size=0, max_size=4)
    tensors = st.tuples(st.sampled_from(["input", "", "x"]), st.sampled_from(DATATYPES), shapes,
                        st.one_of(st.none(), st.binary(max_size=4096), st.integers(0, 3000).map(bytes)))

    @given(inputs=st.lists(tensors, min_size=0, max_size=3), model=st.sampled_from(["mnist-tiny", "nope"]),
           version=st.sampled_from(["", "1", "2", "9", "x"]))
    @settings(max_examples=60, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def answered_cleanly(inputs, model, version):
        request = service_pb2.ModelInferRequest(model_name=model, model_version=version)
        for name, datatype, shape, raw in inputs:
            request.inputs.add(name=name, datatype=datatype, shape=shape)
            if raw is not None:
                request.raw_input_contents.append(raw)
        try:
            client._client_stub.ModelInfer(request, timeout=30)
        except grpc.RpcError as exc:
            assert exc.code() in CLEAN, (exc.code(), exc.details())
            assert exc.details() and "Traceback" not in exc.details()

    answered_cleanly()
    assert client.is_server_ready() and client.is_model_ready("mnist-tiny")
    assert requests.get(f"{service.url}/readyz", timeout=30).status_code == 200


def test_a_passed_deadline_is_deadline_exceeded_and_the_service_stays_ready(client):
    x = np.zeros((64, 784), np.uint8)
    with pytest.raises(InferenceServerException) as caught:
        client.infer("mnist-tiny", [_input(x)], client_timeout=0.000001)
    assert caught.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    assert client.is_server_ready()
