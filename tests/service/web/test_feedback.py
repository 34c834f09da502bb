"""Corrections (service/web/api/feedback.py, service/web/corrections.py) through each door: stored once as
an image-folder dataset training reads, recorded with the version and the predicted label, counted in
Prometheus; off (409) while TRAINSERVE_FEEDBACK_DIR is unset."""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image

URL = "/v1/models/mnist-tiny/versions/2/feedback"


def test_a_correction_is_stored_once_where_training_reads_it(make_app, tmp_path, mnist):
    app = make_app(feedback_dir=tmp_path)
    client = app.test_client()
    shown = client.post("/v1/models/mnist-tiny/versions/2:classify?include_input=true",
                        data=_png(mnist["test_x"][0]), content_type="image/png").json["predictions"][0]
    body = {"instances": [shown["input"]], "label": "3", "request_id": "r-1"}
    first = client.post(URL, json=body)
    assert first.status_code == 200, first.json
    item = first.json["stored"][0]
    assert item["label"] == "3" and item["predicted"] == shown["label"] and item["duplicate"] is False
    assert item["hash"] == shown["input_hash"]  # the page can tell it is correcting what it was shown
    again = client.post(URL, json=body).json["stored"][0]
    assert again["duplicate"] is True and again["hash"] == item["hash"]
    bare = client.post("/v1/models/mnist-tiny/feedback", json=body)  # the default version: 2 here
    assert bare.json["version"] == "2" and bare.json["stored"][0]["duplicate"] is True
    stored = tmp_path / "mnist-tiny" / "3" / f"{item['hash']}.png"
    assert np.array_equal(np.asarray(Image.open(stored)), np.asarray(shown["input"][0], np.uint8))
    records = [json.loads(line) for line in (tmp_path / "mnist-tiny" / "corrections.jsonl").read_text()
               .splitlines()]
    assert [(r["label"], r["predicted"], r["version"], r["request_id"]) for r in records] == [
        ("3", shown["label"], "2", "r-1")]
    metrics = client.get("/metrics").get_data(as_text=True)
    assert any(line.startswith("trainserve_corrections_total{") and 'label="3"' in line
               and f'predicted="{shown["label"]}"' in line for line in metrics.splitlines())


def test_an_image_body_is_preprocessed_as_for_classify(make_app, tmp_path, mnist):
    client = make_app(feedback_dir=tmp_path).test_client()
    response = client.post(URL + "?label=7", data=_png(mnist["test_x"][1]), content_type="image/png")
    assert response.status_code == 200, response.json
    assert len(list((tmp_path / "mnist-tiny" / "7").glob("*.png"))) == 1


def test_off_without_a_folder_bad_labels_and_the_limit(make_app, tmp_path, mnist):
    pixels = mnist["test_x"][:1].reshape(1, 1, 28, 28).tolist()
    off = make_app().test_client().post(URL, json={"instances": pixels, "label": "3"})
    assert off.status_code == 409 and "TRAINSERVE_FEEDBACK_DIR" in off.json["error"]
    client = make_app(feedback_dir=tmp_path, feedback_max_items=1).test_client()
    assert client.post(URL, json={"instances": pixels, "label": "eleven"}).status_code == 400
    assert client.post(URL, json={"instances": pixels, "label": "3"}).status_code == 200
    other = mnist["test_x"][1:2].reshape(1, 1, 28, 28).tolist()
    full = client.post(URL, json={"instances": other, "label": "3"})
    assert full.status_code == 429 and "TRAINSERVE_FEEDBACK_MAX_ITEMS" in full.json["error"]


def test_a_rate_over_every_worker_and_an_optional_token(make_app, tmp_path, mnist):
    rows = [mnist["test_x"][i: i + 1].reshape(1, 1, 28, 28).tolist() for i in range(4)]
    # Two apps stand for two workers: the log they share is what the rate is counted from.
    first, second = (make_app(feedback_dir=tmp_path, feedback_per_minute=2).test_client() for _ in range(2))
    assert first.post(URL, json={"instances": rows[0], "label": "3"}).status_code == 200
    assert second.post(URL, json={"instances": rows[1], "label": "3"}).status_code == 200
    limited = first.post(URL, json={"instances": rows[2], "label": "3"})
    assert limited.status_code == 429 and "TRAINSERVE_FEEDBACK_PER_MINUTE" in limited.json["error"]
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert second.post(URL, json={"instances": rows[0], "label": "3"}).json["stored"][0]["duplicate"] is True
    token = "feedback-token-0123456789"
    guarded = make_app(feedback_dir=tmp_path / "guarded", feedback_token=token).test_client()
    body = {"instances": rows[3], "label": "3"}
    assert guarded.post(URL, json=body).status_code == 401
    wrong = {"Authorization": "Bearer wrong-token-0000000"}
    assert guarded.post(URL, json=body, headers=wrong).status_code == 403
    assert guarded.post(URL, json=body, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert (tmp_path / "guarded" / "mnist-tiny" / "corrections.jsonl").read_text().count("\n") == 1


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_table_models_correction_is_a_csv_row_training_reads(make_app, task_root, tmp_path):
    client = make_app(model_dir=task_root["root"], feedback_dir=tmp_path).test_client()
    url = "/v1/models/spiral/feedback"
    arms = client.get("/v1/models/spiral/versions/1/manifest").json["labels"]
    first = client.post(url, json={"instances": [{"x": 0.25, "y": -1.5}], "label": arms[2]})
    assert first.status_code == 200, first.json
    item = first.json["stored"][0]
    assert item["label"] == arms[2] and item["predicted"] in arms and not item["duplicate"]
    again = client.post(url, json={"instances": [[0.25, -1.5]], "label": arms[2]}).json["stored"][0]
    assert again["duplicate"] is True and again["hash"] == item["hash"]
    lines = (tmp_path / "spiral" / "corrections.csv").read_text().splitlines()
    assert lines == ["x,y,label,hash", f"0.25,-1.5,{arms[2]},{item['hash']}"]
    bad = client.post(url, json={"instances": [{"x": 0.25}], "label": arms[0]})
    assert bad.status_code == 400 and "missing features ['y']" in bad.json["error"]
    assert client.post(url, json={"instances": [[1, 2]], "label": "arm 9"}).status_code == 400
    from training.corrections import load_corrections  # what --extra-data reads
    fixes = load_corrections(tmp_path, "spiral", tuple(arms), (2,), holdout=0.0, share=0.0, train_size=1,
                             features=("x", "y"))
    assert fixes.trained_hashes == (item["hash"],)
    assert fixes.trained.images.tolist() == [[0.25, -1.5]] and fixes.trained.labels.tolist() == [2]
