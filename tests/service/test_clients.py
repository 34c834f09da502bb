"""The real clients against the whole service, on each front end: tritonclient (sync and aio) for the
statistics, configuration and repository extensions, compression and datatypes; KServe's
InferenceRESTClient over v2 and v1 (:explain included, in a process of its own); the request id and the
access log in the service's own log."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
import time

import numpy as np
import pytest
import requests

pytestmark = pytest.mark.slow

TOKEN = "management-token-for-tests-42"


@pytest.fixture
def service(module_service, artifact_root):
    # Two HTTP workers: the statistics must add up whichever worker answers.
    return module_service({"TRAINSERVE_MODEL_DIR": str(artifact_root), "TRAINSERVE_WORKERS": "2",
                           "TRAINSERVE_MANAGEMENT_TOKEN": TOKEN, "TRAINSERVE_ACCESS_LOG": "1",
                           "TRAINSERVE_LOG_FORMAT": "json"})


@pytest.fixture
def triton(service):
    http = pytest.importorskip("tritonclient.http")
    client = http.InferenceServerClient(service.url.removeprefix("http://"))
    yield http, client
    client.close()


def _input(http, x: np.ndarray, datatype: str, binary: bool):
    tensor = http.InferInput("input", list(x.shape), datatype)
    tensor.set_data_from_numpy(x, binary_data=binary)
    return tensor


def test_tritonclient_statistics_add_up_across_workers(triton, mnist):
    http, client = triton
    before = client.get_inference_statistics("mnist-tiny", "2")["model_stats"][0]
    x = mnist["test_x"][:4].reshape(4, 1, 28, 28)
    for _ in range(6):
        client.infer("mnist-tiny", [_input(http, x, "UINT8", True)])
    after = client.get_inference_statistics("mnist-tiny", "2")["model_stats"][0]
    assert after["inference_count"] - before["inference_count"] == 24
    assert after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"] == 6
    assert 1 <= after["execution_count"] - before["execution_count"] <= 6
    every = client.get_inference_statistics()["model_stats"]
    assert {(s["name"], s["version"]) for s in every} == {("mnist-tiny", "1"), ("mnist-tiny", "2")}


def test_tritonclient_model_config_and_repository_index(triton):
    _, client = triton
    config = client.get_model_config("mnist-tiny")
    assert config["max_batch_size"] == 64 and config["input"][0]["dims"] == [1, 28, 28]
    from tritonclient.utils import InferenceServerException
    with pytest.raises(InferenceServerException, match="Bearer"):
        client.get_model_repository_index()
    with pytest.raises(InferenceServerException, match="not the one"):
        client.get_model_repository_index(headers={"Authorization": "Bearer wrong-token"})
    index = client.get_model_repository_index(headers={"Authorization": f"Bearer {TOKEN}"})
    for call in (client.load_model, client.unload_model):  # poll: a clear answer, not a 404
        with pytest.raises(InferenceServerException, match=r"\[409\] model control is 'poll'"):
            call("mnist-tiny", headers={"Authorization": f"Bearer {TOKEN}"})
    states = {(m["name"], m["version"]): m["state"] for m in index}
    assert states == {("mnist-tiny", "1"): "READY", ("mnist-tiny", "2"): "READY",
                      ("tampered", "1"): "UNAVAILABLE"}


@pytest.mark.parametrize("request_coding, response_coding", [("gzip", "gzip"), ("deflate", "deflate"),
                                                             ("gzip", None)])
def test_tritonclient_compressed_requests_and_responses(triton, mnist, request_coding, response_coding):
    http, client = triton
    x = mnist["test_x"][:32].reshape(32, 784)
    for binary in (True, False):
        result = client.infer("mnist-tiny", [_input(http, x, "UINT8", binary)],
                              request_compression_algorithm=request_coding,
                              response_compression_algorithm=response_coding)
        assert (result.as_numpy("logits").argmax(1) == mnist["test_y"][:32]).mean() >= 0.75


@pytest.mark.parametrize("datatype", ["FP16", "FP64", "INT64", "INT32"])
def test_tritonclient_other_datatypes(triton, mnist, datatype):
    http, client = triton
    x = mnist["test_x"][:8].reshape(8, 784)
    values = (x / 255 if datatype.startswith("FP") else x).astype(datatype.replace("FP", "float")
                                                                   .replace("INT", "int").lower())
    expected = client.infer("mnist-tiny", [_input(http, x, "UINT8", True)]).as_numpy("label")
    for binary in (True, False) if datatype != "FP16" else (True,):  # FP16 has no JSON form in the client
        got = client.infer("mnist-tiny", [_input(http, values, datatype, binary)]).as_numpy("label")
        assert got.tolist() == expected.tolist()


def test_tritonclient_aio_json_only_request(service, mnist):
    aio = pytest.importorskip("tritonclient.http.aio")
    x = mnist["test_x"][:4].reshape(4, 784)

    async def run():
        client = aio.InferenceServerClient(service.url.removeprefix("http://"))
        try:
            tensor = aio.InferInput("input", list(x.shape), "UINT8")
            tensor.set_data_from_numpy(x, binary_data=False)
            wanted = [aio.InferRequestedOutput("label", binary_data=False)]
            result = await client.infer("mnist-tiny", [tensor], outputs=wanted)
            return result.as_numpy("label")
        finally:
            await client.close()

    labels = asyncio.run(run())
    assert (labels.astype(int) == mnist["test_y"][:4]).mean() >= 0.75


# KServe's clients run in a process of their own: kserve registers its inference.* protobuf names in the
# default pool, and tritonclient.grpc (imported by tests/service/grpc/ at collection) already holds
# them there, so importing both in one process fails with "duplicate symbol".
_KSERVE_V2 = """
import asyncio, json, sys
import numpy as np
import kserve

async def run(url, x):
    client = kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v2", timeout=30))
    try:
        checks = [await client.is_server_ready(url), await client.is_server_live(url),
                  await client.is_model_ready(url, "mnist-tiny"), await client.is_model_ready(url, "nope")]
        request = kserve.InferRequest("mnist-tiny", [kserve.InferInput("input", list(x.shape), "UINT8", x)],
                                      request_id="kserve-1")
        response = await client.infer(url, request, model_name="mnist-tiny")
        outputs = {o.name: o for o in response.outputs}
        labels = [int(label) for label in outputs["label"].as_numpy().tolist()]
        return {"checks": checks, "id": response.id, "model": response.model_name, "labels": labels}
    finally:
        await client.close()

x = np.asarray(json.loads(sys.argv[2]), np.uint8)
print(json.dumps(asyncio.run(run(sys.argv[1], x))))
"""

_KSERVE_V1 = """
import asyncio, json, sys
import httpx
import kserve

async def run(url, x):
    client = kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v1", timeout=30))
    try:
        checks = [await client.is_server_live(url), await client.is_model_ready(url, "mnist-tiny")]
        answer = await client.infer(url, {"instances": x, "dtype": "uint8"}, model_name="mnist-tiny")
        asked = {"instances": x, "dtype": "uint8", "targets": ["3"]}
        explained = await client.explain(url, "mnist-tiny", asked)
        try:
            await client.explain(url, "mnist-tiny", {"instances": x, "steps": 10**6})
            refused = None
        except httpx.HTTPStatusError as error:
            refused = error.response.status_code
        return {"checks": checks, "answer": answer, "explained": explained, "refused": refused}
    finally:
        await client.close()

print(json.dumps(asyncio.run(run(sys.argv[1], json.loads(sys.argv[2])))))
"""


def _run_kserve(script, url, x):
    if importlib.util.find_spec("kserve") is None:  # found, not imported: see above
        pytest.skip("kserve is not installed (pip install kserve)")
    done = subprocess.run([sys.executable, "-c", script, url, json.dumps(x.tolist())],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_kserve_rest_client_v2(service, mnist):
    result = _run_kserve(_KSERVE_V2, service.url, mnist["test_x"][:4].reshape(4, 784))
    assert result["checks"] == [True, True, True, False]
    assert result["id"] == "kserve-1" and result["model"] == "mnist-tiny"
    assert (np.asarray(result["labels"]) == mnist["test_y"][:4]).mean() >= 0.75


def test_kserve_rest_client_v1(service, mnist):
    result = _run_kserve(_KSERVE_V1, service.url, mnist["test_x"][:3])
    assert result["checks"] == [True, True]
    answer, explained = result["answer"], result["explained"]
    labels = [int(p["label"]) for p in answer["predictions"]]
    assert (np.asarray(labels) == mnist["test_y"][:3]).mean() >= 0.6
    assert [p["label"] for p in explained["predictions"]] == [p["label"] for p in answer["predictions"]]
    for explanation in explained["explanations"]:
        assert explanation["method"] == "integrated_gradients"
        assert set(explanation["attributions"]) == {explanation["label"], "3"}
        assert np.asarray(explanation["attributions"]["3"]).shape == (1, 28, 28)
    assert result["refused"] == 400


def test_request_id_is_returned_and_in_the_service_access_log(service):
    response = requests.get(f"{service.url}/v2/models/mnist-tiny", headers={"X-Request-ID": "find-me-7"},
                            timeout=10)
    assert response.headers["X-Request-ID"] == "find-me-7"
    generated = requests.get(f"{service.url}/v2/health/live", timeout=10).headers["X-Request-ID"]
    assert len(generated) == 32
    for _ in range(100):  # the worker's stderr reaches the file a moment later
        entries = [json.loads(line) for line in service.log.read_text().splitlines()
                   if line.startswith("{")]
        mine = [e for e in entries if e.get("request_id") == "find-me-7"]
        if mine:
            break
        time.sleep(0.1)
    assert [e["logger"] for e in mine] == ["service.access"]
    assert "GET /v2/models/mnist-tiny 200" in mine[0]["message"]
    assert TOKEN not in service.log.read_text()
