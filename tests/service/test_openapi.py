"""The served OpenAPI document states what the service accepts: the same bodies pass the document's
schemas and the service's validation, and the same bodies fail both."""

from __future__ import annotations

import copy
import io
from typing import Any

import jsonschema
import numpy as np
import pytest
from PIL import Image

DIGIT = np.zeros((28, 28), int)
DIGIT[8:20, 12:16] = 255
FLOAT_IMAGE = (DIGIT / 255 * 0.8).tolist()  # strokes at 0.8: fractions

# (v1 predict body, whether the service takes it)
PREDICT_BODIES = [
    ({"instances": [FLOAT_IMAGE]}, True),
    ({"instances": [[FLOAT_IMAGE]], "top_k": 2}, True),
    ({"instances": [DIGIT.ravel().tolist()], "dtype": "uint8", "top_k": None}, True),
    ({"instances": [DIGIT.tolist(), DIGIT.tolist()], "dtype": "uint8"}, True),
    ({"instances": [(DIGIT * 1.0).tolist()], "dtype": "uint8", "top_k": 3.0}, True),  # 255.0 is 255
    ({"instances": [FLOAT_IMAGE], "top_k": 2.5}, False),
    ({"instances": [(DIGIT / 255 + 1e-9).tolist()]}, False),  # just over 1, though float32 would round it
    ({"instances": [(DIGIT * 1e39).tolist()]}, False),  # past float32's range
    ({"instances": []}, False),
    ({"instances": [[]]}, False),
    ({"instances": [FLOAT_IMAGE[:27]]}, False),
    ({"instances": [DIGIT.tolist()]}, False),  # 0..255 as float32
    ({"instances": [FLOAT_IMAGE], "dtype": "uint8"}, False),  # fractions as uint8
    ({"instances": [(-DIGIT).tolist()], "dtype": "uint8"}, False),
    ({"instances": [FLOAT_IMAGE], "dtype": "int64"}, False),
    ({"instances": [FLOAT_IMAGE], "top_k": 0}, False),
    ({"instances": [FLOAT_IMAGE], "extra": 1}, False),
    ({"instances": [DIGIT.ravel().tolist(), DIGIT.tolist()], "dtype": "uint8"}, False),  # mixed shapes
    ({"dtype": "uint8"}, False),
    ([FLOAT_IMAGE], False),
]


def _input(**fields: Any) -> dict[str, Any]:
    return {"name": "input", "shape": [1, 784], "datatype": "UINT8", "data": DIGIT.ravel().tolist()} | fields


# (OIP infer body in JSON form, whether the service takes it)
INFER_BODIES = [
    ({"inputs": [_input()]}, True),
    ({"id": "7", "inputs": [_input(shape=[1, 28, 28], data=DIGIT.tolist())], "outputs": [
        {"name": "label"}, {"name": "probabilities", "parameters": {"classification": 3}}]}, True),
    ({"inputs": [_input(datatype="FP32", shape=[1, 1, 28, 28], data=[[FLOAT_IMAGE]])],
      "parameters": {"binary_data_output": False}}, True),
    ({"inputs": [_input(shape=[1.0, 784.0], data=(DIGIT * 1.0).ravel().tolist())], "outputs": [
        {"name": "label", "parameters": {"classification": 2.0}}]}, True),
    ({"inputs": []}, False),
    ({"inputs": [_input(), _input()]}, False),
    ({"inputs": [_input(data=[])]}, False),
    ({"inputs": [_input(shape=[])]}, False),
    ({"inputs": [_input(shape=[0, 784])]}, False),
    ({"inputs": [_input(shape=[1, 783.5])]}, False),
    ({"inputs": [_input(shape=[1, 2, 3, 4, 5, 6, 7, 8, 9])]}, False),
    ({"inputs": [_input(datatype="INT64")]}, False),
    ({"inputs": [_input(datatype="FP32")]}, False),  # 0..255 as FP32
    ({"inputs": [_input(data=[[300] * 784])]}, False),
    ({"inputs": [_input(parameters={"binary_data_size": 784})]}, False),
    ({"inputs": [{"name": "input", "shape": [1, 784], "datatype": "UINT8"}]}, False),  # no data
    ({"inputs": [_input()], "outputs": [{"name": "scores"}]}, False),
    ({"inputs": [_input()], "outputs": [{"name": "label", "parameters": {"classification": "abc"}}]}, False),
    ({"inputs": [_input()], "outputs": [{"name": "label", "parameters": {"classification": -5}}]}, False),
    ({"inputs": [_input()], "outputs": [{"name": "label", "parameters": {"binary_data": "yes"}}]}, False),
    ({"inputs": [_input()], "parameters": {"binary_data_output": "yes"}}, False),
    ({"inputs": [_input()], "unknown": True}, False),
]


def json_schema(document: dict[str, Any], name: str) -> dict[str, Any]:
    """A component of the document as plain JSON Schema (refs to sibling components, nullable spelled out)."""
    def convert(node: Any) -> Any:
        if isinstance(node, list):
            return [convert(item) for item in node]
        if not isinstance(node, dict):
            return node
        out = {key: convert(value) for key, value in node.items() if key not in ("nullable", "example")}
        if "$ref" in out:
            out["$ref"] = out["$ref"].replace("#/components/schemas/", "#/definitions/")
        return {"anyOf": [out, {"type": "null"}]} if node.get("nullable") else out

    definitions = convert(copy.deepcopy(document["components"]["schemas"]))
    return {"$ref": f"#/definitions/{name}", "definitions": definitions}


@pytest.fixture
def document(client) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    return response.json


def _valid(schema: dict[str, Any], body: Any) -> bool:
    return jsonschema.Draft7Validator(schema).is_valid(body)


@pytest.mark.parametrize(("body", "accepted"), PREDICT_BODIES)
def test_a_predict_body_passes_the_document_exactly_when_the_service_takes_it(client, document, body,
                                                                              accepted):
    response = client.post("/v1/models/mnist-tiny:predict", json=body)
    assert (response.status_code == 200) == accepted, response.json
    assert _valid(json_schema(document, "PredictRequest"), body) == accepted


@pytest.mark.parametrize(("body", "accepted"), INFER_BODIES)
def test_an_infer_body_passes_the_document_exactly_when_the_service_takes_it(client, document, body,
                                                                            accepted):
    response = client.post("/v2/models/mnist-tiny/infer", json=body)
    assert (response.status_code == 200) == accepted, response.json
    assert _valid(json_schema(document, "InferRequest"), body) == accepted


def test_answers_match_the_documented_response_schemas(client, document):
    for path, name, body in [("/v1/models/mnist-tiny:predict", "PredictResponse", PREDICT_BODIES[0][0]),
                             ("/v2/models/mnist-tiny/infer", "InferResponse", INFER_BODIES[1][0]),
                             ("/v1/models/nope:predict", "Error", PREDICT_BODIES[0][0])]:
        jsonschema.validate(client.post(path, json=body).json, json_schema(document, name))
    for path, name in [("/v1/models", "ModelList"), ("/v2/models/mnist-tiny", "ModelMetadata"),
                       ("/readyz", "Readiness"), ("/v2", "ServerMetadata")]:
        jsonschema.validate(client.get(path).json, json_schema(document, name))


def test_models_and_versions_are_the_served_ones(document):
    infer = document["paths"]["/v2/models/{name}/versions/{version}/infer"]["post"]
    params = {p["name"]: p["schema"] for p in infer["parameters"] if p["in"] == "path"}
    assert params["name"]["enum"] == ["mnist-tiny"]  # the tampered artifact is refused, so not listed
    assert params["version"]["enum"] == ["1", "2"]


def test_an_upload_needs_a_file_and_every_refusal_is_documented_with_the_error_shape(client, document):
    classify = document["paths"]["/v1/models/{name}:classify"]["post"]
    assert classify["requestBody"]["content"]["multipart/form-data"]["schema"]["required"] == ["file"]
    response = client.post("/v1/models/mnist-tiny:classify", data={"note": "no file"},
                           content_type="multipart/form-data")
    assert response.status_code == 400 and "no file" in response.json["error"]
    buffer = io.BytesIO()
    Image.fromarray(DIGIT.astype(np.uint8)).save(buffer, format="PNG")
    response = client.post("/v1/models/mnist-tiny:classify", content_type="multipart/form-data",
                           data={"file": (io.BytesIO(buffer.getvalue()), "digit.png")})
    assert response.status_code == 200
    error = {"$ref": "#/components/schemas/Error"}
    for status in ("400", "404", "413", "415", "429", "503", "504"):
        assert classify["responses"][status]["content"]["application/json"]["schema"] == error
    assert document["components"]["schemas"]["Error"]["required"] == ["error"]
    assert "Retry-After" in classify["responses"]["429"]["headers"]
