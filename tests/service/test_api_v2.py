"""The Open Inference Protocol v2 endpoints, through the Flask test client and a real tiny model."""

from __future__ import annotations

import numpy as np
import pytest

from service.schemas import InferResponse


def infer_body(x: np.ndarray, shape: list[int] | None = None, datatype: str = "UINT8", **extra) -> dict:
    return {"inputs": [{"name": "input", "shape": shape or list(x.shape), "datatype": datatype,
                        "data": x.ravel().tolist()}], **extra}


def test_server_metadata_and_health(client):
    assert client.get("/v2").json["name"] == "trainserve"
    assert client.get("/v2/health/live").json == {"live": True}
    assert client.get("/v2/health/ready").json == {"ready": True}


def test_model_metadata_describes_the_real_tensors(client):
    meta = client.get("/v2/models/mnist-tiny").json
    assert meta["name"] == "mnist-tiny" and meta["versions"] == ["1", "2"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28],
                               "parameters": {"datatypes": ["FP32", "UINT8"], "range": [0.0, 1.0]}}]
    assert {o["name"]: o["shape"] for o in meta["outputs"]} == {
        "logits": [-1, 10], "probabilities": [-1, 10], "label": [-1]}
    assert client.get("/v2/models/mnist-tiny/versions/1").json["parameters"]["version"] == "1"


def test_model_ready(client):
    expected = {"name": "mnist-tiny", "version": "2", "ready": True}
    assert client.get("/v2/models/mnist-tiny/ready").json == expected
    assert client.get("/v2/models/mnist-tiny/versions/1/ready").status_code == 200


@pytest.mark.parametrize("shape", [[8, 1, 28, 28], [8, 28, 28], [8, 784]])
@pytest.mark.parametrize("datatype", ["UINT8", "FP32"])
def test_infer_accepts_every_shape_and_datatype_and_labels_real_digits(client, mnist, shape, datatype):
    x = mnist["test_x"][:8]
    data = x if datatype == "UINT8" else x.astype(np.float32) / 255
    response = client.post("/v2/models/mnist-tiny/infer", json=infer_body(data, shape, datatype, id="req-7"))
    assert response.status_code == 200, response.json
    body = response.json
    assert InferResponse().validate(body) == {}
    assert body["id"] == "req-7" and body["model_name"] == "mnist-tiny" and body["model_version"] == "2"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["logits"]["shape"] == [8, 10] and outputs["logits"]["datatype"] == "FP32"
    probs = np.asarray(outputs["probabilities"]["data"]).reshape(8, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    labels = [int(v) for v in outputs["label"]["data"]]
    assert (np.asarray(labels) == mnist["test_y"][:8]).mean() >= 0.75
    assert labels == probs.argmax(axis=1).tolist()


def test_nested_data_and_same_answers_as_flat(client, mnist):
    x = mnist["test_x"][:3]
    flat = client.post("/v2/models/mnist-tiny/infer", json=infer_body(x)).json
    nested_body = infer_body(x)
    nested_body["inputs"][0]["data"] = x.tolist()
    assert client.post("/v2/models/mnist-tiny/infer", json=nested_body).json["outputs"] == flat["outputs"]


def test_requested_outputs_and_classification_extension(client, mnist):
    x = mnist["test_x"][:2]
    top3 = {"name": "probabilities", "parameters": {"classification": 3}}
    body = infer_body(x, outputs=[{"name": "label"}, top3])
    outputs = client.post("/v2/models/mnist-tiny/infer", json=body).json["outputs"]
    assert [o["name"] for o in outputs] == ["label", "probabilities"]
    top = outputs[1]
    assert top["datatype"] == "BYTES" and top["shape"] == [2, 3]
    score, index, label = top["data"][0].split(":")
    assert label == outputs[0]["data"][0] == index and 0 < float(score) <= 1


def test_a_version_can_be_addressed(client, mnist):
    response = client.post("/v2/models/mnist-tiny/versions/1/infer", json=infer_body(mnist["test_x"][:1]))
    assert response.json["model_version"] == "1"


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b["inputs"][0].update(shape=[2, 28, 28]), "needs 1568"),
    (lambda b: b["inputs"][0].update(shape=[1, 3, 28, 28]), "not accepted"),
    (lambda b: b["inputs"][0].update(datatype="INT64"), "datatype"),
    (lambda b: b["inputs"][0].update(data=[300] * 784), "0..255"),
    (lambda b: b["inputs"][0].update(data=[-1] * 784), "0..255"),
    (lambda b: b["inputs"][0].update(datatype="FP32", data=[1.5] * 784), "[0.0, 1.0]"),
    (lambda b: b["inputs"][0].update(data=["x"] * 784), "numbers"),
    (lambda b: b["inputs"][0].update(data=[[0] * 784, [0] * 3]), "numbers"),
    (lambda b: b["inputs"][0].update(data=[]), "non-empty"),
    (lambda b: b.update(outputs=[{"name": "embedding"}]), "outputs"),
    (lambda b: b.pop("inputs"), "inputs"),
    (lambda b: b.update(surprise=1), "surprise"),
])
def test_invalid_requests_are_400_with_a_reason(client, mutate, message):
    body = infer_body(np.zeros((1, 784), np.uint8))
    mutate(body)
    response = client.post("/v2/models/mnist-tiny/infer", json=body)
    assert response.status_code == 400
    assert message in response.json["error"]


def test_nan_and_infinity_are_400(client):
    for token in ("NaN", "1e999", "Infinity"):
        raw = '{"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32", "data": [TOKEN]}]}'
        raw = raw.replace("TOKEN", token)
        response = client.post("/v2/models/mnist-tiny/infer", data=raw, content_type="application/json")
        assert response.status_code == 400, token


def test_malformed_json_is_400(client):
    response = client.post("/v2/models/mnist-tiny/infer", data="{not json", content_type="application/json")
    assert response.status_code == 400 and "malformed JSON" in response.json["error"]


def test_unknown_model_or_version_is_404(client):
    body = infer_body(np.zeros((1, 784), np.uint8))
    assert client.post("/v2/models/nope/infer", json=body).status_code == 404
    response = client.post("/v2/models/mnist-tiny/versions/9/infer", json=body)
    assert response.status_code == 404 and "has no version '9'" in response.json["error"]
    assert client.get("/v2/models/nope").status_code == 404
    assert client.get("/v2/models/mnist-tiny/versions/9/ready").status_code == 404


def test_wrong_content_type_is_415(client):
    response = client.post("/v2/models/mnist-tiny/infer", data="inputs=1", content_type="text/plain")
    assert response.status_code == 415 and "application/json" in response.json["error"]
    binary = client.post("/v2/models/mnist-tiny/infer", data=b"{}", content_type="application/octet-stream",
                         headers={"Inference-Header-Content-Length": "2"})
    assert binary.status_code == 415
