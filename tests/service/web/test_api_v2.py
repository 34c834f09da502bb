"""The Open Inference Protocol v2 endpoints, through the Flask test client and a real tiny model."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from service.web.schemas import InferResponse


def infer_body(x: np.ndarray, shape: list[int] | None = None, datatype: str = "UINT8", **extra) -> dict:
    return {"inputs": [{"name": "input", "shape": shape or list(x.shape), "datatype": datatype,
                        "data": x.ravel().tolist()}], **extra}


def test_server_metadata_and_health(client):
    assert client.get("/v2").json["name"] == "trainserve"
    assert "binary_tensor_data" in client.get("/v2").json["extensions"]
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
    (lambda b: b["inputs"][0].update(datatype="BF16"), "datatype"),
    (lambda b: b["inputs"][0].update(data=[300] * 784), "0..255"),
    (lambda b: b["inputs"][0].update(data=[-1] * 784), "0..255"),
    (lambda b: b["inputs"][0].update(datatype="FP32", data=[1.5] * 784), "[0.0, 1.0]"),
    (lambda b: b["inputs"][0].update(data=["x"] * 784), "numbers"),
    (lambda b: b["inputs"][0].update(data=[[0] * 784, [0] * 3]), "numbers"),
    (lambda b: b["inputs"][0].update(data=[]), "non-empty"),
    (lambda b: b.update(outputs=[{"name": "embedding"}]), "outputs"),
    (lambda b: b.update(outputs=[{"name": "label", "parameters": {"classification": "abc"}}]), "classif"),
    (lambda b: b.update(outputs=[{"name": "label", "parameters": {"classification": -5}}]), "classif"),
    (lambda b: b.update(outputs=[{"name": "label", "parameters": {"classification": 1e300}}]), "classif"),
    (lambda b: b.update(outputs=[{"name": "label", "parameters": {"binary_data": "yes"}}]), "binary_data"),
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
    assert binary.status_code == 400 and "inputs" in binary.json["error"]
    wrong = client.post("/v2/models/mnist-tiny/infer", data=b"{}", content_type="text/plain",
                        headers={"Inference-Header-Content-Length": "2"})
    assert wrong.status_code == 415 and "octet-stream" in wrong.json["error"]


def binary_request(x: np.ndarray, datatype: str = "UINT8", **extra) -> tuple[bytes, dict[str, str]]:
    """A body in the binary tensor data extension: JSON header, then the tensor's raw bytes."""
    raw = x.tobytes()
    header = orjson.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": datatype,
                                       "parameters": {"binary_data_size": len(raw)}}], **extra})
    return header + raw, {"Inference-Header-Content-Length": str(len(header))}


def split_response(response) -> tuple[dict, bytes]:
    length = int(response.headers["Inference-Header-Content-Length"])
    return orjson.loads(response.data[:length]), response.data[length:]


@pytest.mark.parametrize("datatype", ["UINT8", "FP32"])
def test_binary_inputs_give_the_same_answers_as_json(client, mnist, datatype):
    x = mnist["test_x"][:6].reshape(6, 1, 28, 28)
    x = x if datatype == "UINT8" else (x / 255).astype(np.float32)
    body, headers = binary_request(x, datatype)
    response = client.post("/v2/models/mnist-tiny/infer", data=body, headers=headers)
    assert response.status_code == 200, response.json
    as_json = client.post("/v2/models/mnist-tiny/infer", json=infer_body(x, datatype=datatype)).json
    assert response.json["outputs"] == as_json["outputs"]
    assert "Inference-Header-Content-Length" not in response.headers  # no binary output asked for


def test_binary_outputs_per_output_and_by_request_parameter(client, mnist):
    x = mnist["test_x"][:4].reshape(4, 784)
    outputs = [{"name": "logits", "parameters": {"binary_data": True}}, {"name": "label"},
               {"name": "probabilities", "parameters": {"classification": 2, "binary_data": True}}]
    response = client.post("/v2/models/mnist-tiny/infer", json=infer_body(x, outputs=outputs))
    assert response.status_code == 200 and response.mimetype == "application/octet-stream"
    header, raw = split_response(response)
    logits, label, top2 = header["outputs"]
    assert "data" not in logits and logits["parameters"]["binary_data_size"] == 4 * 10 * 4
    values = np.frombuffer(raw[:160], dtype="<f4").reshape(4, 10)
    assert values.argmax(axis=1).astype(str).tolist() == label["data"]
    # BYTES elements: a 4-byte little-endian length, then the UTF-8 string.
    strings, rest = [], raw[160:]
    while rest:
        n = int.from_bytes(rest[:4], "little")
        strings.append(rest[4:4 + n].decode())
        rest = rest[4 + n:]
    assert len(raw) - 160 == top2["parameters"]["binary_data_size"] and len(strings) == 8
    assert [s.split(":")[2] for s in strings[::2]] == label["data"]
    everything = client.post("/v2/models/mnist-tiny/infer",
                             json=infer_body(x, parameters={"binary_data_output": True}))
    header, raw = split_response(everything)
    sizes = [o["parameters"]["binary_data_size"] for o in header["outputs"]]
    assert sizes[:2] == [160, 160] and sum(sizes) == len(raw)


def test_an_output_flag_overrides_the_request_parameter(client):
    outputs = [{"name": "label", "parameters": {"binary_data": False}}, {"name": "logits"}]
    body = infer_body(np.zeros((1, 784), np.uint8), outputs=outputs, parameters={"binary_data_output": True})
    header, raw = split_response(client.post("/v2/models/mnist-tiny/infer", json=body))
    assert "data" in header["outputs"][0] and header["outputs"][1]["parameters"]["binary_data_size"] == 40
    assert len(raw) == 40


@pytest.mark.parametrize("header_length, cut, message", [
    ("abc", 0, "must be a byte count"),
    ("0", 0, "but the body has"),
    ("999999", 0, "but the body has"),
    (None, 10, "declares 784 bytes but only 774"),   # truncated tensor bytes
    (None, -5, "declare 784 bytes but 789 follow"),  # trailing bytes
    (-3, 0, "malformed JSON"),                       # the header length cuts the JSON short
])
def test_malformed_binary_bodies_are_400_with_a_reason(client, header_length, cut, message):
    body, headers = binary_request(np.zeros((1, 784), np.uint8))
    if cut > 0:
        body = body[:-cut]
    elif cut < 0:
        body += b"\0" * -cut
    if isinstance(header_length, int):
        header_length = str(int(headers["Inference-Header-Content-Length"]) + header_length)
    if header_length is not None:
        headers["Inference-Header-Content-Length"] = header_length
    response = client.post("/v2/models/mnist-tiny/infer", data=body, headers=headers)
    assert response.status_code == 400
    assert message in response.json["error"]


@pytest.mark.parametrize("parameters, data, message", [
    ({"binary_data_size": 100}, None, "needs 784 bytes"),
    ({"binary_data_size": -1}, None, "byte count"),
    ({"binary_data_size": "784"}, None, "byte count"),
    ({"binary_data_size": 784}, [0] * 784, "both data and binary_data_size"),
    ({}, None, "neither data nor binary_data_size"),
])
def test_binary_size_mismatches_are_400(client, parameters, data, message):
    tensor = {"name": "input", "shape": [1, 784], "datatype": "UINT8", "parameters": parameters}
    if data is not None:
        tensor["data"] = data
    header = orjson.dumps({"inputs": [tensor]})
    response = client.post("/v2/models/mnist-tiny/infer", data=header + bytes(784),
                           headers={"Inference-Header-Content-Length": str(len(header))})
    assert response.status_code == 400
    assert message in response.json["error"]


def test_binary_input_values_are_still_checked(client):
    body, headers = binary_request(np.full((1, 784), np.nan, np.float32), "FP32")
    response = client.post("/v2/models/mnist-tiny/infer", data=body, headers=headers)
    assert response.status_code == 400 and "NaN" in response.json["error"]


@pytest.mark.slow
def test_tritonclient_round_trip_with_its_defaults(serve, artifact_root, mnist):
    http = pytest.importorskip("tritonclient.http")
    server = serve({"TRAINSERVE_MODEL_DIR": str(artifact_root), "TRAINSERVE_WORKERS": "1"})
    client = http.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        assert client.is_server_ready() and client.is_model_ready("mnist-tiny")
        x = mnist["test_x"][:16].reshape(16, 1, 28, 28)
        tensor = http.InferInput("input", list(x.shape), "UINT8")
        tensor.set_data_from_numpy(x)  # binary by default
        result = client.infer("mnist-tiny", [tensor])  # no outputs named: all of them, binary
        logits, labels = result.as_numpy("logits"), result.as_numpy("label")
        assert logits.shape == (16, 10) and labels.dtype == object
        assert labels.astype(str).tolist() == logits.argmax(axis=1).astype(str).tolist()
        assert (logits.argmax(axis=1) == mnist["test_y"][:16]).mean() >= 0.75
        top = client.infer("mnist-tiny", [tensor], model_version="1",
                           outputs=[http.InferRequestedOutput("probabilities", class_count=3)])
        assert top.as_numpy("probabilities").shape == (16, 3)
    finally:
        client.close()
