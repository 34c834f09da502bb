"""Binary, multi-label and tabular models, trained by the real CLI code on real data, served through a real
runtime and answering through v1 and the Open Inference Protocol."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from service.contract.manifest import read_manifest
from service.web.schemas import InferResponse, PredictResponse
from training.export import load_scripted


@pytest.fixture(scope="module")
def task_client(task_root: dict[str, object], make_app_module: Callable[..., object]) -> object:
    return make_app_module(model_dir=task_root["root"]).test_client()


@pytest.fixture(scope="module")
def make_app_module(runtimes, metrics_dir, through_door):  # one app per door for the whole module
    from service.config import ServiceConfig
    from service.web.app import create_app

    apps = []

    def build(**overrides: object) -> object:
        settings = {"device": "cpu", "torch_threads": 1, "max_batch_delay_ms": 2.0,
                    "request_timeout_s": 10.0} | overrides
        runtime = runtimes(model_dir=settings["model_dir"], device="cpu", torch_threads=1,
                           max_batch_delay_ms=2.0)
        app = through_door(create_app(ServiceConfig(**settings, runtime_sockets=str(runtime.socket),
                                                    prometheus_multiproc_dir=metrics_dir)))
        apps.append(app)
        return app

    yield build
    for app in apps:
        app.extensions["trainserve"].close()


def _module_probabilities(root: Path, name: str, x: np.ndarray) -> np.ndarray:
    """What the exported module itself says, divided by the manifest's calibration temperature, through a
    sigmoid: the reference the service must match."""
    temperature = read_manifest(root / name / "1").calibration.temperature
    with torch.inference_mode():
        logits = load_scripted(root / name / "1" / "model.pt")(torch.from_numpy(x))
    return torch.sigmoid(logits / temperature).numpy()


def test_listing_and_metadata_describe_each_task(task_client):
    models = {m["name"]: m for m in task_client.get("/v1/models").json["models"]}
    assert models["cancer"]["task"] == "binary" and models["cancer"]["threshold"] == 0.4
    assert models["cancer"]["input_kind"] == "features" and len(models["cancer"]["features"]) == 30
    assert models["digit-props"]["labels"] == ["even", "ge5", "prime"]
    assert models["spiral"]["task"] == "multiclass" and models["spiral"]["features"] == ["x", "y"]
    meta = task_client.get("/v2/models/cancer").json
    assert meta["inputs"][0]["shape"] == [-1, 30] and meta["inputs"][0]["parameters"]["datatypes"] == ["FP32"]
    scaling = meta["inputs"][0]["parameters"]["scaling"]
    assert scaling["method"] == "standardize" and set(scaling["mean"]) == set(models["cancer"]["features"])
    outputs = {o["name"]: o for o in meta["outputs"]}
    assert outputs["probabilities"]["shape"] == [-1, 1]
    assert outputs["probabilities"]["parameters"] == {"activation": "sigmoid", "labels": ["malignant"],
                                                      "temperature": meta["parameters"]["temperature"]}
    assert meta["parameters"]["temperature"] > 0 and "outliers" not in meta["parameters"]  # images only
    assert outputs["decisions"]["datatype"] == "BOOL"
    assert meta["parameters"]["task"] == "binary" and meta["parameters"]["labels"] == ["not malignant",
                                                                                      "malignant"]
    multi = task_client.get("/v2/models/digit-props").json
    assert {o["name"]: o["shape"] for o in multi["outputs"]} == {
        "logits": [-1, 3], "probabilities": [-1, 3], "label": [-1], "decisions": [-1, 3]}
    spiral = task_client.get("/v2/models/spiral").json
    assert "decisions" not in {o["name"] for o in spiral["outputs"]}
    assert spiral["outputs"][1]["parameters"]["activation"] == "softmax"


def test_tabular_binary_in_v1_takes_named_features(task_client, task_root):
    rows = task_root["rows"][:40]
    features = [{k: v for k, v in row.items() if k != "malignant"} for row in rows]
    response = task_client.post("/v1/models/cancer:predict", json={"instances": features})
    assert response.status_code == 200, response.json
    body = response.json
    assert PredictResponse().validate(body) == {} and body["task"] == "binary" and body["threshold"] == 0.4
    x = np.array([list(f.values()) for f in features], dtype=np.float32)
    expected = _module_probabilities(task_root["root"], "cancer", x)[:, 0]
    for prediction, p in zip(body["predictions"], expected, strict=True):
        probs = prediction["probabilities"]
        assert probs["malignant"] == pytest.approx(p, abs=1e-5)
        assert probs["not malignant"] == pytest.approx(1 - p, abs=1e-5)
        assert prediction["label"] == ("malignant" if p >= 0.4 else "not malignant")
        assert prediction["labels"] == [prediction["label"]]
    truth = ["malignant" if row["malignant"] else "not malignant" for row in rows]
    assert np.mean([p["label"] == t for p, t in zip(body["predictions"], truth, strict=True)]) >= 0.8
    # Feature order does not matter in an object; the per-request threshold moves the decision.
    shuffled = [dict(reversed(list(f.items()))) for f in features]
    strict = task_client.post("/v1/models/cancer:predict",
                              json={"instances": shuffled, "threshold": 1.0}).json
    assert strict["threshold"] == 1.0
    assert [p["probabilities"] for p in strict["predictions"]] == [p["probabilities"]
                                                                   for p in body["predictions"]]
    assert all(p["label"] == "not malignant" for p in strict["predictions"]
               if p["probabilities"]["malignant"] < 1)


def test_tabular_binary_through_oip(task_client, task_root):
    rows = task_root["rows"][:8]
    x = np.array([[v for k, v in row.items() if k != "malignant"] for row in rows], dtype=np.float32)
    request = {"inputs": [{"name": "input", "shape": [8, 30], "datatype": "FP32",
                           "data": x.ravel().tolist()}], "parameters": {"threshold": 0.9}}
    body = task_client.post("/v2/models/cancer/infer", json=request).json
    assert InferResponse().validate(body) == {}
    assert body["parameters"] == {"task": "binary", "threshold": 0.9}
    out = {o["name"]: o for o in body["outputs"]}
    expected = _module_probabilities(task_root["root"], "cancer", x)
    assert out["probabilities"]["shape"] == [8, 1]
    assert np.allclose(out["probabilities"]["data"], expected.ravel(), atol=1e-5)
    assert out["decisions"]["data"] == (expected.ravel() >= 0.9).tolist()
    assert out["label"]["data"] == ["malignant" if p >= 0.9 else "not malignant" for p in expected.ravel()]


def test_multilabel_image_model_returns_the_label_set(task_client, task_root, mnist):
    images = mnist["test_x"][:50]
    body = task_client.post("/v1/models/digit-props:predict",
                            json={"instances": images.tolist(), "dtype": "uint8"}).json
    assert PredictResponse().validate(body) == {} and body["task"] == "multilabel"
    expected = _module_probabilities(task_root["root"], "digit-props", images[:, None])
    for prediction, probs in zip(body["predictions"], expected, strict=True):
        assert "label" not in prediction and set(prediction["probabilities"]) == {"even", "ge5", "prime"}
        assert prediction["labels"] == [n for n, p in zip(("even", "ge5", "prime"), probs, strict=True)
                                        if p >= 0.5]
    digits = mnist["test_y"][:50]
    truth = np.stack([digits % 2 == 0, digits >= 5, np.isin(digits, [2, 3, 5, 7])], axis=1)
    assert ((expected >= 0.5) == truth).mean() >= 0.7  # two short epochs on 1,000 digits
    request = {"inputs": [{"name": "input", "shape": [50, 784], "datatype": "UINT8",
                           "data": images.ravel().tolist()}],
               "outputs": [{"name": "label"}, {"name": "decisions"}]}
    answer = task_client.post("/v2/models/digit-props/infer", json=request).json
    out = {o["name"]: o for o in answer["outputs"]}
    assert out["decisions"]["shape"] == [50, 3]
    decided = np.array(out["decisions"]["data"]).reshape(50, 3)
    assert (decided == (expected >= 0.5)).all()
    assert out["label"]["data"] == [",".join(p["labels"]) for p in body["predictions"]]


def test_tabular_multiclass_spiral_in_v1_and_oip(task_client):
    points = [{"x": 0.5, "y": -0.2}, {"x": -0.1, "y": 0.7}]
    v1 = task_client.post("/v1/models/spiral:predict", json={"instances": points}).json
    assert all(abs(sum(p["probabilities"].values()) - 1) < 1e-5 for p in v1["predictions"])
    assert "threshold" not in v1
    lists = task_client.post("/v1/models/spiral:predict", json={"instances": [[0.5, -0.2], [-0.1, 0.7]]}).json
    assert lists["predictions"] == v1["predictions"]
    oip = task_client.post("/v2/models/spiral/infer", json={"inputs": [
        {"name": "input", "shape": [2, 2], "datatype": "FP32", "data": [0.5, -0.2, -0.1, 0.7]}]}).json
    assert [o["name"] for o in oip["outputs"]] == ["logits", "probabilities", "label"]
    assert oip["outputs"][2]["data"] == [p["label"] for p in v1["predictions"]]


@pytest.mark.parametrize(("path", "body", "message"), [
    ("/v1/models/cancer:predict", {"instances": [{"mean_radius": 1.0}]}, "missing features"),
    ("/v1/models/spiral:predict", {"instances": [{"x": 1, "y": 2, "z": 3}]}, "unknown features ['z']"),
    ("/v1/models/spiral:predict", {"instances": [{"x": "one", "y": 2}]}, "feature 'x' must be a number"),
    ("/v1/models/spiral:predict", {"instances": [{"x": 1, "y": 2}, [1, 2]]}, "all be objects"),
    ("/v1/models/spiral:predict", {"instances": [{"x": 1e39, "y": 2}]}, "finite"),
    ("/v1/models/spiral:predict", {"instances": [[1, 2]], "threshold": 0.3}, "spiral is multiclass"),
    ("/v1/models/cancer:predict", {"instances": [[0] * 30], "threshold": 2}, "threshold"),
    # finite but absurd features the net overflows on (found by the fuzzer): no NaN probabilities
    ("/v1/models/cancer:predict", {"instances": [[3.4e38, -3.4e38] * 15]}, "not finite for example(s) [0]"),
    ("/v1/models/spiral:predict", {"instances": [[0, 0]], "dtype": "uint8"}, "use FP32"),
    ("/v2/models/spiral/infer", {"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32",
                                             "data": [1, 2, 3]}]}, "not accepted"),
    ("/v2/models/cancer/infer", {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32",
                                             "data": [0] * 30}], "parameters": {"threshold": "high"}},
     "threshold"),
    ("/v2/models/spiral/infer", {"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32",
                                             "data": [0, 0]}], "outputs": [{"name": "decisions"}]},
     "unknown output 'decisions'"),
])
def test_bad_requests_are_400_with_the_reason(task_client, path, body, message):
    response = task_client.post(path, json=body)
    assert response.status_code == 400 and message in response.json["error"], response.json


def test_a_feature_model_refuses_image_uploads(task_client):
    response = task_client.post("/v1/models/spiral:classify", data=b"\x89PNG", content_type="image/png")
    assert response.status_code == 400 and ":predict" in response.json["error"]


def test_manifests_carry_task_threshold_and_scaling(task_root):
    cancer = read_manifest(task_root["root"] / "cancer" / "1")
    assert cancer.task == "binary" and cancer.threshold == 0.4 and cancer.output.shape == (1,)
    assert cancer.input.kind == "features" and cancer.input.scaling["applied_by"] == "model"
    assert 0.5 < cancer.metrics["roc_auc"] <= 1.0 and "f1" in cancer.metrics


def test_decisions_travel_as_binary_bool_tensors(task_client, task_root):
    import json
    import struct

    rows = task_root["rows"][:2]
    features = np.array([[v for k, v in row.items() if k != "malignant"] for row in rows], dtype=np.float32)
    header = json.dumps({"inputs": [{"name": "input", "shape": [2, 30], "datatype": "FP32",
                                     "parameters": {"binary_data_size": features.nbytes}}],
                         "outputs": [{"name": "decisions", "parameters": {"binary_data": True}},
                                     {"name": "label", "parameters": {"binary_data": True}}]}).encode()
    response = task_client.post("/v2/models/cancer/infer", data=header + features.tobytes(),
                                headers={"Inference-Header-Content-Length": str(len(header))})
    assert response.status_code == 200, response.data[:300]
    length = int(response.headers["Inference-Header-Content-Length"])
    meta = json.loads(response.data[:length])
    decisions_size = meta["outputs"][0]["parameters"]["binary_data_size"]
    assert meta["outputs"][0]["datatype"] == "BOOL" and decisions_size == 2
    raw = response.data[length:]
    decided = np.frombuffer(raw[:decisions_size], dtype=np.bool_)
    first = struct.unpack("<I", raw[decisions_size:decisions_size + 4])[0]
    label = raw[decisions_size + 4:decisions_size + 4 + first].decode()
    assert label == ("malignant" if decided[0] else "not malignant")


@pytest.mark.parametrize(("name", "shown"), [("cancer", ["mean_radius", "Decision threshold", "0.4"]),
                                             ("spiral", ["2: x, y", "multi-class"])])
def test_a_feature_models_page_shows_its_features_and_task(task_client, name, shown):
    response = task_client.get(f"/ui/models/{name}")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert all(text in html for text in shown), shown
