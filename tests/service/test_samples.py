"""samples/, which the README's examples post: the shipped model reads every one as the digit it shows,
except the reversed 3, which it gets wrong (the README's example of a correction)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SAMPLES = sorted(p for p in (REPO / "samples").glob("*.*g") if not p.name.startswith("reversed-"))
REVERSED = REPO / "samples" / "reversed-3.png"
TYPES = {".png": "image/png", ".jpg": "image/jpeg"}


def _digit(path: Path) -> int:
    return int(path.stem.rsplit("-", 1)[1])  # mnist-7.png, drawn-3.png




def test_the_samples_cover_both_formats_and_a_drawn_digit():
    assert {p.suffix for p in SAMPLES} == set(TYPES)
    assert any(p.name.startswith("drawn-") for p in SAMPLES)


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_the_shipped_model_reads_each_sample_as_its_digit(make_app, ui_root, path):
    client = make_app(model_dir=ui_root).test_client()
    response = client.post("/v1/models/mnist-cnn:classify", data=path.read_bytes(),
                           content_type=TYPES[path.suffix])
    assert response.status_code == 200, response.json
    assert response.json["predictions"][0]["label"] == str(_digit(path))


def test_several_samples_in_one_multipart_request_come_back_in_order(make_app, ui_root):
    client = make_app(model_dir=ui_root).test_client()
    files = {f"f{i}": (path.open("rb"), path.name) for i, path in enumerate(SAMPLES)}
    response = client.post("/v1/models/mnist-cnn:classify?top_k=3", data=files,
                           content_type="multipart/form-data")
    assert response.status_code == 200, response.json
    predictions = response.json["predictions"]
    assert [p["label"] for p in predictions] == [str(_digit(p)) for p in SAMPLES]
    assert all(len(p["probabilities"]) == 3 for p in predictions)


def test_the_shipped_model_gets_the_reversed_three_wrong(make_app, ui_root):
    client = make_app(model_dir=ui_root).test_client()
    response = client.post("/v1/models/mnist-cnn:classify?plain=true", data=REVERSED.read_bytes(),
                           content_type="image/png")
    assert response.status_code == 200, response.json
    assert response.json["predictions"][0]["label"] != "3"
