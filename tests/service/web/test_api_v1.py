"""The simple JSON API and the image upload endpoint, through the Flask test client and a real tiny model."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from service.web.schemas import PredictResponse


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_list_models_marks_the_default_version(client):
    models = client.get("/v1/models").json["models"]
    assert [(m["name"], m["version"], m["default"]) for m in models] == [
        ("mnist-tiny", "1", False), ("mnist-tiny", "2", True)]
    assert models[0]["labels"] == [str(d) for d in range(10)] and models[0]["ready"] is True


def test_predict_float_pixels_gives_labels_and_probabilities(client, mnist):
    x = mnist["test_x"][:10].astype(np.float32) / 255
    response = client.post("/v1/models/mnist-tiny:predict", json={"instances": x.tolist()})
    assert response.status_code == 200, response.json
    body = response.json
    assert PredictResponse().validate(body) == {}
    labels = [p["label"] for p in body["predictions"]]
    assert np.mean(np.asarray(labels, dtype=int) == mnist["test_y"][:10]) >= 0.8
    first = body["predictions"][0]["probabilities"]
    assert len(first) == 10 and abs(sum(first.values()) - 1) < 1e-5
    assert max(first, key=first.get) == body["predictions"][0]["label"]


def test_predict_uint8_and_top_k(client, mnist):
    x = mnist["test_x"][:2]
    body = client.post("/v1/models/mnist-tiny:predict",
                       json={"instances": x.reshape(2, 784).tolist(), "dtype": "uint8", "top_k": 3}).json
    for prediction in body["predictions"]:
        probs = list(prediction["probabilities"].values())
        assert len(probs) == 3 and probs == sorted(probs, reverse=True)
        assert next(iter(prediction["probabilities"])) == prediction["label"]


def test_predict_addresses_a_version(client, mnist):
    response = client.post("/v1/models/mnist-tiny/versions/1:predict",
                           json={"instances": mnist["test_x"][:1].tolist(), "dtype": "uint8"})
    assert response.json["version"] == "1"


def test_predict_rejects_bad_input_with_400(client):
    cases = [({"instances": [[0] * 10]}, "not accepted"),
             ({"instances": [[300] * 784], "dtype": "uint8"}, "0..255"),
             ({"instances": [[255] * 784]}, "send UINT8"),
             ({"instances": [[0] * 784], "top_k": 0}, "top_k"),
             ({"instances": "zeros"}, "instances"),
             ({"images": []}, "images")]
    for body, message in cases:
        response = client.post("/v1/models/mnist-tiny:predict", json=body)
        assert response.status_code == 400 and message in response.json["error"], (body, response.json)


def test_predict_unknown_model_is_404(client):
    response = client.post("/v1/models/nope:predict", json={"instances": [[0] * 784]})
    assert response.status_code == 404 and response.json == {"error": "model 'nope' is not served here"}


def test_classify_a_raw_png_body(client, mnist):
    response = client.post("/v1/models/mnist-tiny:classify?top_k=2", data=png(mnist["test_x"][0]),
                           content_type="image/png")
    assert response.status_code == 200, response.json
    prediction = response.json["predictions"][0]
    assert prediction["label"] == str(mnist["test_y"][0]) and len(prediction["probabilities"]) == 2


def test_classify_many_multipart_files_in_one_batch(client, mnist):
    files = {f"digit{i}": (io.BytesIO(png(mnist["test_x"][i])), f"{i}.png", "image/png") for i in range(6)}
    response = client.post("/v1/models/mnist-tiny:classify", data=files, content_type="multipart/form-data")
    assert response.status_code == 200, response.json
    labels = [int(p["label"]) for p in response.json["predictions"]]
    assert len(labels) == 6 and np.mean(np.asarray(labels) == mnist["test_y"][:6]) >= 0.8


def test_classify_a_jpeg_photo_of_a_dark_digit_on_light_paper(client, mnist):
    digit = np.asarray(Image.fromarray(255 - mnist["test_x"][0]).resize((140, 140), Image.Resampling.BICUBIC))
    photo = np.full((300, 400, 3), 235, np.uint8)
    photo[40:180, 200:340] = np.minimum(digit, 235)[..., None]
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, format="JPEG", quality=85)
    response = client.post("/v1/models/mnist-tiny:classify", data=buffer.getvalue(),
                           content_type="image/jpeg")
    assert response.json["predictions"][0]["label"] == str(mnist["test_y"][0])


def test_classify_errors(client):
    assert client.post("/v1/models/mnist-tiny:classify", data=b"not an image",
                       content_type="image/png").status_code == 400
    response = client.post("/v1/models/mnist-tiny:classify", json={"instances": []})
    assert response.status_code == 415 and "image/png" in response.json["error"]
    empty = client.post("/v1/models/mnist-tiny:classify", data={"x": "text"},
                        content_type="multipart/form-data")
    assert empty.status_code == 400 and "no file" in empty.json["error"]
    assert client.post("/v1/models/mnist-tiny:classify?top_k=x", data=b"",
                       content_type="image/png").status_code == 400
