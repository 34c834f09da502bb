"""``:explain`` (service/web/explaining.py, service/runtime/explain.py) through each door over real model
runtimes: KServe's v1 shape, image bodies and multipart, other labels on request, the bounds (400, 429),
and the sanity checks an attribution must pass (Adebayo et al.'s model randomisation; the top pixels of a
digit lie on its strokes)."""

from __future__ import annotations

import io
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from service.runtime.explain import ExplainQueue, Job
from service.web.schemas import ExplainResponse
from training.export import ArtifactInfo, PixelClassifier, export

URL = "/v1/models/mnist-tiny:explain"


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def maps(answer: dict, label: str | None = None) -> list[np.ndarray]:
    """Each example's attribution map for ``label`` (its predicted one when None), [28, 28]."""
    return [np.asarray(e["attributions"][label or e["label"]], np.float32)[0] for e in answer["explanations"]]


@pytest.fixture(scope="module")
def random_root(tmp_path_factory: pytest.TempPathFactory, artifact_root: Path) -> Path:
    """models/ with the trained mnist-tiny and mnist-random 1: the same net (conftest's TinyNet) with
    freshly initialised weights, the model-randomisation test's pair."""
    root = tmp_path_factory.mktemp("explain-models")
    shutil.copytree(artifact_root / "mnist-tiny", root / "mnist-tiny")
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3), nn.ReLU(),
                        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 5 * 5, 10))
    info = ArtifactInfo(name="mnist-random", architecture="tiny-cnn", labels=tuple(str(d) for d in range(10)),
                        input_shape=(1, 28, 28), metrics={"test_accuracy": 0.1}, training={},
                        dataset={"name": "mnist", "source": "tests"}, version="1")
    export(PixelClassifier(net, (0.1307,), (0.3081,)).eval(), info, root, torch.zeros(2, 1, 28, 28))
    return root


def test_a_v1_body_gets_predictions_and_a_map_per_example(client, mnist):
    x = mnist["test_x"][:2]
    response = client.post(URL, json={"instances": x.tolist(), "dtype": "uint8"})
    assert response.status_code == 200, response.json
    body = response.json
    assert ExplainResponse().validate(body) == {}
    assert [p["label"] for p in body["predictions"]] == [e["label"] for e in body["explanations"]]
    first = body["explanations"][0]
    assert first["method"] == "integrated_gradients" and first["captum"] == "IntegratedGradients"
    assert first["parameters"]["n_steps"] == 32 and first["parameters"]["baseline"] == "zeros"
    assert all(m.shape == (28, 28) and np.abs(m).sum() > 0 for m in maps(body))


def test_other_labels_method_and_steps_on_request(client, mnist):
    x = mnist["test_x"][:1]
    body = client.post(URL, json={"instances": x.tolist(), "dtype": "uint8", "targets": ["3", "5"],
                                  "steps": 8}).json
    explanation = body["explanations"][0]
    assert set(explanation["attributions"]) == {explanation["label"], "3", "5"}
    assert explanation["parameters"]["n_steps"] == 8
    occluded = client.post(URL, json={"instances": x.tolist(), "dtype": "uint8", "method": "occlusion"}).json
    assert occluded["explanations"][0]["captum"] == "Occlusion"
    assert occluded["explanations"][0]["parameters"] == {"baseline": "zeros", "window": 4, "stride": 2}


def test_image_bodies_and_multipart_as_for_classify(client, mnist):
    raw = client.post(URL + "?targets=1&steps=4", data=png(mnist["test_x"][0]), content_type="image/png")
    assert raw.status_code == 200, raw.json
    assert raw.json["predictions"][0]["label"] == str(mnist["test_y"][0])
    assert set(raw.json["explanations"][0]["attributions"]) >= {"1"}
    files = {f"d{i}": (io.BytesIO(png(mnist["test_x"][i])), f"{i}.png", "image/png") for i in range(3)}
    multi = client.post("/v1/models/mnist-tiny/versions/1:explain", data=files,
                        content_type="multipart/form-data")
    assert multi.status_code == 200, multi.json
    assert multi.json["version"] == "1" and len(multi.json["explanations"]) == 3


def test_the_bounds_are_400_with_the_setting_named(client, mnist):
    x = mnist["test_x"][:1].tolist()
    nine = mnist["test_x"][:9].tolist()
    cases = [({"instances": x, "dtype": "uint8", "steps": 1000}, "TRAINSERVE_EXPLAIN_MAX_STEPS"),
             ({"instances": nine, "dtype": "uint8"}, "TRAINSERVE_EXPLAIN_MAX_EXAMPLES"),
             ({"instances": x, "dtype": "uint8", "targets": ["1", "2", "3", "4", "5", "6", "7", "8"]},
              "TRAINSERVE_EXPLAIN_MAX_EXAMPLES"),
             ({"instances": x, "dtype": "uint8", "targets": ["eleven"]}, "not labels"),
             ({"instances": x, "dtype": "uint8", "method": "lime"}, "method"),
             ({"instances": x, "dtype": "uint8", "steps": 0}, "steps")]
    for body, text in cases:
        response = client.post(URL, json=body)
        assert response.status_code == 400 and text in response.json["error"], (body.keys(), response.json)
    assert client.post(URL + "?steps=x", data=png(mnist["test_x"][0]),
                       content_type="image/png").status_code == 400


def test_a_full_explanation_queue_is_429_while_predictions_go_on(make_app, special_root, mnist):
    app = make_app(model_dir=special_root, explain_max_queue=1, request_timeout_s=300.0,
                   explain_timeout_s=300.0)  # deadlines never decide this test: the queue does
    client = app.test_client()
    body = {"instances": mnist["test_x"][:1].tolist(), "dtype": "uint8", "steps": 4}

    def explain(_: int) -> int:
        return app.test_client().post("/v1/models/slow:explain", json=body).status_code

    with ThreadPoolExecutor(6) as pool:
        pending = [pool.submit(explain, i) for i in range(6)]
        predicted = client.post("/v1/models/slow:predict", json={"instances": body["instances"],
                                                                  "dtype": "uint8"})
        statuses = [future.result() for future in pending]
    assert predicted.status_code == 200
    assert 429 in statuses and 200 in statuses and set(statuses) <= {200, 429}, statuses
    counted = [line for line in client.get("/metrics").get_data(as_text=True).splitlines()
               if line.startswith("trainserve_explanations_total{") and 'model="slow"' in line]
    assert any('outcome="refused"' in line for line in counted), counted
    assert any('outcome="ok"' in line for line in counted), counted


def test_attributions_change_when_the_weights_are_randomised(make_app, random_root, mnist):
    client = make_app(model_dir=random_root).test_client()
    ours, theirs = [], []
    for digit, label in zip(mnist["test_x"][:6], mnist["test_y"][:6], strict=True):
        # the true label's map, whatever each model predicts
        request = {"instances": [digit.tolist()], "dtype": "uint8", "targets": [str(label)]}
        ours += maps(client.post(URL, json=request).json, str(label))
        theirs += maps(client.post("/v1/models/mnist-random:explain", json=request).json, str(label))
    correlations = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(ours, theirs, strict=True)]
    assert np.median(correlations) < 0.5, correlations


@pytest.mark.parametrize("method", ["integrated_gradients", "occlusion"])
def test_the_top_attributed_pixels_lie_on_the_strokes(client, mnist, method):
    x = mnist["test_x"][:8]
    body = client.post(URL, json={"instances": x.tolist(), "dtype": "uint8", "method": method}).json
    on_strokes = []
    for digit, attribution in zip(x, maps(body), strict=True):
        top = np.argsort(attribution.ravel())[-20:]  # the 20 pixels that pushed hardest towards the answer
        near = np.maximum.reduce([np.roll(digit, (dy, dx), (0, 1)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
        surface = near if method == "occlusion" else digit  # a 4x4 patch may centre just off a stroke
        on_strokes.append(np.mean(surface.ravel()[top] > 64))
    assert np.mean(on_strokes) >= 0.8, on_strokes


def test_the_share_rule_lets_predictions_through_and_explanations_too():
    queue = ExplainQueue(max_queue=2, share=0.25)
    job = Job(None, 0, 0, np.zeros((1, 1, 28, 28), np.uint8), [-1], "occlusion", 1, 10.0, 0.0)
    queue.put(job, "m/1")
    queue.put(job, "m/1")
    with pytest.raises(Exception, match="EXPLAIN_MAX_QUEUE"):
        queue.put(job, "m/1")
    assert queue.take(busy=True, now=1.0) is job  # nothing ran yet: its turn
    queue.done(took=1.0, now=2.0)  # one second of attributions: three of other work before the next
    assert queue.take(busy=True, now=4.0) is None and queue.wait_s(now=4.0) == 1.0
    assert queue.take(busy=False, now=4.0) is job  # an idle runtime: at once
    assert queue.take(busy=True, now=5.1) is None and queue.wait_s(now=5.1) is None
