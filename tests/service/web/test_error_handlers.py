"""Every error status, as a client sees it: JSON ``{"error": ...}`` with the right code and headers."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

ZERO = {"instances": [[0.0] * 784]}


def test_unknown_route_and_wrong_method_are_json(client):
    missing = client.get("/nowhere")
    assert missing.status_code == 404 and "error" in missing.json
    wrong = client.get("/v2/models/mnist-tiny/infer")
    assert wrong.status_code == 405 and "error" in wrong.json and "POST" in wrong.headers["Allow"]


def test_oversized_body_is_413(make_app):
    client = make_app(max_request_bytes=4096).test_client()
    response = client.post("/v1/models/mnist-tiny:predict", json={"instances": [[0.5] * 784] * 4})
    assert response.status_code == 413 and "error" in response.json
    image = client.post("/v1/models/mnist-tiny:classify", data=b"\x89PNG" + bytes(5000),
                        content_type="image/png")
    assert image.status_code == 413


def test_a_claimed_length_over_the_limit_is_413_before_anything_is_allocated(make_app):
    client = make_app(max_request_bytes=4096).test_client()
    response = client.post("/v2/models/mnist-tiny/infer", data=b"{}" + bytes(20),
                           headers={"Inference-Header-Content-Length": "2"},
                           environ_overrides={"CONTENT_LENGTH": str(10**12)})  # a terabyte, claimed
    assert response.status_code == 413 and "limit is 4096" in response.json["error"]
    assert client.post("/v1/models/mnist-tiny:predict", json=ZERO).status_code == 200


@pytest.fixture
def special_app(make_app, special_root):
    def build(**overrides):
        return make_app(model_dir=special_root, **overrides)
    return build


def test_full_queue_is_429_with_retry_after(special_app):
    # One request runs (~0.2 s on the slow model), one waits in the queue of 1: the rest are refused at once.
    client = special_app(max_batch_size=1, max_queue=1).test_client()
    with ThreadPoolExecutor(5) as pool:
        responses = list(pool.map(lambda _: client.post("/v1/models/slow:predict", json=ZERO), range(5)))
    refused = [r for r in responses if r.status_code == 429]
    assert len(refused) >= 2 and {r.status_code for r in responses} == {200, 429}
    assert all(r.headers["Retry-After"] == "1" and "retry" in r.json["error"] for r in refused)


def test_passed_deadline_is_504(special_app):
    client = special_app(request_timeout_s=0.02).test_client()
    response = client.post("/v1/models/slow:predict", json=ZERO)
    assert response.status_code == 504 and "deadline" in response.json["error"]


def test_failing_batch_is_500_for_every_request_in_it_and_service_goes_on(special_app):
    app = special_app()
    client = app.test_client()
    poisoned = np.zeros((2, 784), np.float32)
    poisoned[1, 0] = 1.0  # a valid pixel the poison model refuses
    response = client.post("/v1/models/poison:predict", json={"instances": poisoned.tolist()})
    assert response.status_code == 500
    assert response.json["error"].startswith("inference failed for model poison/1")
    assert client.post("/v1/models/poison:predict", json=ZERO).status_code == 200
    assert client.get("/readyz").status_code == 200
