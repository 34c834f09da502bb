"""The real clients against the whole service, on each front end: tritonclient (sync and aio) for the
statistics, configuration and repository extensions, compression and datatypes; KServe's
InferenceRESTClient over v2 and v1 (:explain included); the request id and the access log in the
service's own log."""

from __future__ import annotations

import asyncio
import json
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


def test_kserve_rest_client_v2(service, mnist):
    kserve = pytest.importorskip("kserve")
    x = mnist["test_x"][:4].reshape(4, 784)

    async def run():
        client = kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v2", timeout=30))
        try:
            assert await client.is_server_ready(service.url)
            assert await client.is_server_live(service.url)
            assert await client.is_model_ready(service.url, "mnist-tiny")
            assert not await client.is_model_ready(service.url, "nope")
            request = kserve.InferRequest("mnist-tiny", [kserve.InferInput("input", [4, 784], "UINT8", x)],
                                          request_id="kserve-1")
            response = await client.infer(service.url, request, model_name="mnist-tiny")
            return response
        finally:
            await client.close()

    response = asyncio.run(run())
    assert response.id == "kserve-1" and response.model_name == "mnist-tiny"
    outputs = {o.name: o for o in response.outputs}
    labels = outputs["label"].as_numpy().astype(int)
    assert (labels == mnist["test_y"][:4]).mean() >= 0.75


def test_kserve_rest_client_v1(service, mnist):
    kserve = pytest.importorskip("kserve")
    import httpx
    x = mnist["test_x"][:3]

    async def run():
        client = kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v1", timeout=30))
        try:
            assert await client.is_server_live(service.url)
            assert await client.is_model_ready(service.url, "mnist-tiny")
            answer = await client.infer(service.url, {"instances": x.tolist(), "dtype": "uint8"},
                                        model_name="mnist-tiny")
            explained = await client.explain(service.url, "mnist-tiny",
                                             {"instances": x.tolist(), "dtype": "uint8", "targets": ["3"]})
            with pytest.raises(httpx.HTTPStatusError, match="400"):
                await client.explain(service.url, "mnist-tiny", {"instances": x.tolist(), "steps": 10**6})
            return answer, explained
        finally:
            await client.close()

    answer, explained = asyncio.run(run())
    labels = [int(p["label"]) for p in answer["predictions"]]
    assert (np.asarray(labels) == mnist["test_y"][:3]).mean() >= 0.6
    assert [p["label"] for p in explained["predictions"]] == [p["label"] for p in answer["predictions"]]
    for explanation in explained["explanations"]:
        assert explanation["method"] == "integrated_gradients"
        assert set(explanation["attributions"]) == {explanation["label"], "3"}
        assert np.asarray(explanation["attributions"]["3"]).shape == (1, 28, 28)


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
