"""The served OpenAPI document states what the service accepts: the same bodies pass the document's
schemas and the service's validation, and the same bodies fail both."""

from __future__ import annotations

import copy
import io
import re
from typing import Any

import jsonschema
import numpy as np
import pytest
from PIL import Image
from werkzeug.routing import Map, Rule

from service.contract.manifest import read_manifest
from service.web.openapi import ROUTES, check_routes

DIGIT = np.zeros((28, 28), int)
DIGIT[8:20, 12:16] = 255
FLOAT_IMAGE = (DIGIT / 255 * 0.8).tolist()  # strokes at 0.8: fractions
TOKEN = "a-management-token-0123"

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
    ({"instances": [FLOAT_IMAGE], "threshold": 0.5}, False),  # only binary and multilabel models take one
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
    ({"inputs": [_input(datatype="INT64")]}, True),  # pixels 0..255 in any integer type
    ({"inputs": [_input(datatype="INT8", data=(DIGIT // 2).ravel().tolist())]}, True),
    ({"inputs": [_input(datatype="FP64", data=(DIGIT / 255).ravel().tolist())]}, True),
    ({"inputs": [_input(datatype="FP16", shape=[1, 28, 28], data=FLOAT_IMAGE)]}, True),
    ({"model_name": "mnist-tiny", "model_version": "2", "inputs": [_input()]}, True),
    ({"inputs": [_input(datatype="INT8")]}, False),  # 255 is past INT8
    ({"inputs": [_input(datatype="INT32", data=(DIGIT + 0.5).ravel().tolist())]}, False),
    ({"inputs": [_input(datatype="FP64", data=(DIGIT * 1e300).ravel().tolist())]}, False),  # past FP32
    ({"inputs": [_input(datatype="BF16")]}, False),
    ({"model_name": "other", "inputs": [_input()]}, False),
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
    ({"inputs": [_input()], "parameters": {"threshold": 0.5}}, False),  # a multiclass model
    ({"inputs": [_input()], "outputs": [{"name": "decisions"}]}, False),
]

SPIRAL = {"x": 0.5, "y": -0.2}


def _features(names: list[str], x: float = 1.0) -> dict[str, float]:
    """One row for the breast-cancer model, every feature ``x`` (the values are not the point here)."""
    return {name: x for name in names}


# Bodies for the binary (tabular), multi-label (images) and multi-class (tabular) models served together:
# (model, v1 predict body given the cancer model's feature names, whether the service takes it)
TASK_PREDICT_BODIES = [
    ("spiral", lambda f: {"instances": [SPIRAL, {"x": -3, "y": 2}]}, True),
    ("spiral", lambda f: {"instances": [[0.5, -0.2]]}, True),
    ("spiral", lambda f: {"instances": [{"x": 0.5}]}, False),  # a feature missing
    ("spiral", lambda f: {"instances": [SPIRAL | {"z": 1}]}, False),
    ("spiral", lambda f: {"instances": [{"x": "0.5", "y": 1}]}, False),
    ("spiral", lambda f: {"instances": [{"x": True, "y": 1}]}, False),
    ("spiral", lambda f: {"instances": [{"x": 1e39, "y": 1}]}, False),  # past float32's range
    ("spiral", lambda f: {"instances": [SPIRAL, [0.5, -0.2]]}, False),  # objects and lists mixed
    ("spiral", lambda f: {"instances": [[0.5, -0.2, 1.0]]}, False),
    ("spiral", lambda f: {"instances": [[1, 2]], "dtype": "uint8"}, False),
    ("cancer", lambda f: {"instances": [_features(f), _features(f, 2.5)], "threshold": 0.3}, True),
    ("cancer", lambda f: {"instances": [_features(f)], "threshold": 1}, True),
    ("cancer", lambda f: {"instances": [_features(f)], "threshold": None, "top_k": 1}, True),
    ("cancer", lambda f: {"instances": [_features(f)], "threshold": 1.5}, False),
    ("cancer", lambda f: {"instances": [_features(f)], "threshold": "0.3"}, False),
    ("cancer", lambda f: {"instances": [_features(f)], "threshold": True}, False),
    ("digit-props", lambda f: {"instances": [DIGIT.tolist()], "dtype": "uint8", "threshold": 0.7}, True),
    ("digit-props", lambda f: {"instances": [FLOAT_IMAGE]}, True),
    ("digit-props", lambda f: {"instances": [DIGIT.tolist()]}, False),  # 0..255 as float32
]


def _row(name: str, datatype: str, shape: list[int], data: list[Any]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


TASK_INFER_BODIES = [
    ("spiral", lambda f: {"inputs": [_row("input", "FP32", [2, 2], [0.5, -0.2, -3, 2])]}, True),
    ("spiral", lambda f: {"inputs": [_row("input", "FP32", [1, 2], [1e39, 0])]}, False),
    ("spiral", lambda f: {"inputs": [_row("input", "UINT8", [1, 2], [1, 2])]}, False),
    ("cancer", lambda f: {"inputs": [_row("input", "FP32", [1, 30], [1.0] * 30)],
                        "parameters": {"threshold": 0.9}, "outputs": [{"name": "decisions"}]}, True),
    ("cancer", lambda f: {"inputs": [_row("input", "FP32", [1, 30], [1.0] * 30)],
                        "parameters": {"threshold": 2}}, False),
    ("cancer", lambda f: {"inputs": [_row("input", "FP32", [1, 30], [1.0] * 30)],
                        "parameters": {"threshold": "0.5"}}, False),
    ("cancer", lambda f: {"inputs": [_row("input", "FP32", [1, 30], [1.0] * 30)],
                        "parameters": {"threshold": None}}, False),
    ("digit-props", lambda f: {"inputs": [_input()], "outputs": [{"name": "label"}, {"name": "decisions"}],
                             "parameters": {"threshold": 0.2}}, True),
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


def _agree(client, document: dict[str, Any], path: str, schema: str, body: Any, accepted: bool) -> None:
    """The service takes ``body`` at ``path`` exactly when the document's ``schema`` accepts it."""
    response = client.post(path, json=body)
    assert (response.status_code == 200) == accepted, response.json
    assert _valid(json_schema(document, schema), body) == accepted


@pytest.mark.parametrize(("body", "accepted"), PREDICT_BODIES)
def test_a_predict_body_passes_the_document_exactly_when_the_service_takes_it(client, document, body,
                                                                              accepted):
    _agree(client, document, "/v1/models/mnist-tiny:predict", "PredictRequest", body, accepted)


@pytest.mark.parametrize(("body", "accepted"), INFER_BODIES)
def test_an_infer_body_passes_the_document_exactly_when_the_service_takes_it(client, document, body,
                                                                            accepted):
    _agree(client, document, "/v2/models/mnist-tiny/infer", "InferRequest", body, accepted)


def test_answers_match_the_documented_response_schemas(client, document):
    for path, name, body in [("/v1/models/mnist-tiny:predict", "PredictResponse", PREDICT_BODIES[0][0]),
                             ("/v2/models/mnist-tiny/infer", "InferResponse", INFER_BODIES[1][0]),
                             ("/v1/models/nope:predict", "Error", PREDICT_BODIES[0][0])]:
        jsonschema.validate(client.post(path, json=body).json, json_schema(document, name))
    for path, name in [("/v1/models", "ModelList"), ("/v2/models/mnist-tiny", "ModelMetadata"),
                       ("/readyz", "Readiness"), ("/v2", "ServerMetadata"),
                       ("/v2/models/stats", "Statistics"),
                       ("/v2/models/mnist-tiny/versions/1/stats", "Statistics"),
                       ("/v2/models/mnist-tiny/config", "ModelConfig"),
                       ("/v1/models/mnist-tiny", "ModelStatus"), ("/", "Alive")]:
        response = client.get(path)
        assert response.status_code == 200, path
        jsonschema.validate(response.json, json_schema(document, name))


def test_the_repository_routes_are_documented_behind_the_bearer_token(make_app, document):
    client = make_app(management_token=TOKEN).test_client()
    response = client.post("/v2/repository/index", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    index = document["paths"]["/v2/repository/index"]["post"]
    entries = index["responses"]["200"]["content"]["application/json"]["schema"]
    definitions = json_schema(document, "RepositoryEntry")["definitions"]
    jsonschema.validate(response.json, {"type": "array", "items": {"$ref": "#/definitions/RepositoryEntry"},
                                        "definitions": definitions})
    assert entries["items"] == {"$ref": "#/components/schemas/RepositoryEntry"}
    assert {e["state"] for e in response.json} == {"READY", "UNAVAILABLE"}
    for path in ("/v2/repository/index", "/v2/repository/models/{name}/load"):
        op = document["paths"][path]["post"]
        assert op["security"] == [{"bearer": []}] and {"401", "403"} <= set(op["responses"])
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    load = client.post("/v2/repository/models/mnist-tiny/load", headers={"Authorization": f"Bearer {TOKEN}"})
    assert load.status_code == 409 and "409" in document["paths"]["/v2/repository/models/{name}/load"][
        "post"]["responses"]


def _served(app) -> set[tuple[str, str]]:
    """Every (path, method) the app's URL rules answer, spelt as OpenAPI does; static files aside."""
    rules = [rule for rule in app.url_map.iter_rules() if rule.endpoint not in ("static", "ui.static")]
    # Every blueprint is seen: a route added to any of them is held to the document below.
    assert set(app.blueprints) <= {rule.endpoint.partition(".")[0] for rule in rules}
    return {(re.sub(r"<(?:[^<>]+:)?([^<>]+)>", r"{\1}", rule.rule), method.lower())
            for rule in rules for method in rule.methods - {"HEAD", "OPTIONS"}}


@pytest.mark.parametrize("token", [None, TOKEN], ids=["no token", "token"])
def test_the_document_names_every_route_the_app_serves_and_no_other(make_app, token):
    app = make_app(management_token=token)
    response = app.test_client().get("/openapi.json")
    assert response.status_code == 200
    document = response.json
    assert document["openapi"].startswith("3.") and document["info"]["title"] == "trainserve"
    served = _served(app)
    assert {("/v2/repository/index", "post"), ("/ui/models/{name}/{version}", "get"), ("/metrics", "get"),
            ("/healthz", "get"), ("/openapi.json", "get")} <= served
    documented = {(path, method) for path, operations in document["paths"].items() for method in operations}
    assert not served - documented, f"served but not documented: {sorted(served - documented)}"
    assert not documented - served, f"documented but not served: {sorted(documented - served)}"
    rows = [(path, method) for path, method, *_ in ROUTES]
    assert len(rows) == len(set(rows)) and set(rows) == served


def _copied(app, *added: Rule, leave_out: str = "") -> Map:
    """The app's URL rules but ``leave_out``, and ``added`` (copies: a rule belongs to one map)."""
    rules = [Rule(r.rule, endpoint=r.endpoint, methods=r.methods) for r in app.url_map.iter_rules()
             if r.rule != leave_out]
    return Map([*rules, *added])


def test_a_route_without_a_row_or_a_row_without_a_route_is_refused(app):
    check_routes(_copied(app))
    retrain = Rule("/v1/models/<name>:retrain", endpoint="v1.retrain", methods=["POST"])
    with pytest.raises(ValueError, match=re.escape("undocumented [('/v1/models/{name}:retrain', 'post')]")):
        check_routes(_copied(app, retrain))
    with pytest.raises(ValueError, match=re.escape("not served [('/metrics', 'get')]")):
        check_routes(_copied(app, leave_out="/metrics"))


@pytest.fixture
def task_client(make_app, task_root) -> Any:
    """A client of the binary (tabular), multi-label (image) and multi-class (tabular) models."""
    return make_app(model_dir=task_root["root"]).test_client()


@pytest.fixture
def features(task_root) -> list[str]:
    """The cancer model's feature names, in order, as its manifest gives them."""
    return list(read_manifest(task_root["root"] / "cancer" / "1").input.features)


@pytest.fixture
def task_document(task_client) -> dict[str, Any]:
    response = task_client.get("/openapi.json")
    assert response.status_code == 200
    return response.json


@pytest.mark.parametrize(("name", "body", "accepted"), TASK_PREDICT_BODIES)
def test_a_predict_body_for_each_task_passes_the_document_exactly_when_the_service_takes_it(
        task_client, task_document, features, name, body, accepted):
    _agree(task_client, task_document, f"/v1/models/{name}:predict", "PredictRequest", body(features),
           accepted)


@pytest.mark.parametrize(("name", "body", "accepted"), TASK_INFER_BODIES)
def test_an_infer_body_for_each_task_passes_the_document_exactly_when_the_service_takes_it(
        task_client, task_document, features, name, body, accepted):
    _agree(task_client, task_document, f"/v2/models/{name}/infer", "InferRequest", body(features),
           accepted)


def test_answers_for_each_task_match_the_documented_response_schemas(task_client, task_document, features):
    answers = [("/v1/models/spiral:predict", "PredictResponse", TASK_PREDICT_BODIES[0][1]),
               ("/v1/models/cancer:predict", "PredictResponse", TASK_PREDICT_BODIES[10][1]),
               ("/v1/models/digit-props:predict", "PredictResponse", TASK_PREDICT_BODIES[16][1]),
               ("/v2/models/spiral/infer", "InferResponse", TASK_INFER_BODIES[0][1]),
               ("/v2/models/cancer/infer", "InferResponse", TASK_INFER_BODIES[3][1]),
               ("/v2/models/digit-props/infer", "InferResponse", TASK_INFER_BODIES[7][1])]
    for path, name, body in answers:
        answer = task_client.post(path, json=body(features)).json
        jsonschema.validate(answer, json_schema(task_document, name))
    multilabel = task_client.post("/v1/models/digit-props:predict",
                                  json=TASK_PREDICT_BODIES[16][1](features)).json
    assert "label" not in multilabel["predictions"][0] and multilabel["threshold"] == 0.7
    for path, name in [("/v1/models", "ModelList"), ("/v2/models/cancer", "ModelMetadata"),
                       ("/v2/models/digit-props", "ModelMetadata"), ("/v2/models/spiral", "ModelMetadata")]:
        jsonschema.validate(task_client.get(path).json, json_schema(task_document, name))


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
