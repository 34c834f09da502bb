"""Calibrated answers and "not a digit": the pure functions every door calls, and the shipped model over
real HTTP, flagging a blank image and a Fashion-MNIST image and answering a real digit."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from service.contract.manifest import Calibration, OutlierSpec, read_manifest
from service.web.confidence import annotate, calibrated, describe, judge, withheld_labels
from service.web.tensors import oip_outputs, predictions, softmax
from training.datasets import IDX_DATASETS, find_idx_folder, read_idx

REPO = Path(__file__).resolve().parents[3]
SHIPPED = REPO / "models" / "mnist-cnn"
NEWEST = max((p for p in SHIPPED.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
LABELS = tuple("0123456789")


@pytest.fixture(scope="module")
def manifest():
    """The newest shipped manifest: a temperature and a "not a digit" threshold."""
    return read_manifest(NEWEST)


def _with(manifest, temperature=1.0, threshold=None):
    outliers = None if threshold is None else OutlierSpec(threshold=threshold)
    return dataclasses.replace(manifest, calibration=Calibration(temperature=temperature), outliers=outliers)


def test_the_temperature_divides_the_logits_and_one_leaves_them_as_they_are(manifest) -> None:
    logits = np.array([[4.0, 1.0, 0.0, 0, 0, 0, 0, 0, 0, 0]], np.float32)
    assert calibrated(logits, _with(manifest)) is logits
    hot = calibrated(logits, _with(manifest, temperature=2.0))
    np.testing.assert_allclose(hot, logits / 2)
    assert softmax(hot).max() < softmax(logits).max() and softmax(hot).argmax() == softmax(logits).argmax()


def test_a_model_without_a_score_answers_as_before(manifest) -> None:
    logits = np.zeros((2, 10), np.float32)
    plain = _with(manifest)
    assert judge(logits, plain) is None and "outliers" not in describe(plain)
    answers = predictions(logits, LABELS)
    assert annotate([dict(a) for a in answers], None, plain=False) == answers


def test_an_unsure_example_is_flagged_and_loses_its_label_unless_plain(manifest) -> None:
    sure = np.array([12.0, 0, 0, 0, 0, 0, 0, 0, 0, 0], np.float32)
    unsure = np.full(10, 0.1, np.float32)
    logits = np.stack([sure, unsure])
    m = _with(manifest, threshold=0.5)
    verdict = judge(logits, m)
    assert verdict.flagged.tolist() == [False, True]
    np.testing.assert_allclose(verdict.scores, 1 - softmax(logits).max(axis=1), atol=1e-6)
    answers = annotate(predictions(logits, LABELS), verdict, plain=False)
    assert [a["label"] for a in answers] == ["0", None]
    assert [a["outlier"] for a in answers] == [False, True]
    assert answers[1]["outlier_score"] == pytest.approx(0.9)
    assert annotate(predictions(logits, LABELS), verdict, plain=True)[1]["label"] == "0"
    strings = np.array(["0", "0"], dtype=object)
    assert withheld_labels(strings, verdict, plain=False).tolist() == ["0", ""]
    assert withheld_labels(strings, verdict, plain=True).tolist() == ["0", "0"]


def test_oip_gives_the_flag_and_the_score_as_outputs(manifest) -> None:
    logits = np.stack([np.eye(10, dtype=np.float32)[3] * 20, np.zeros(10, np.float32)])
    m = _with(manifest, threshold=0.5)
    outputs = {o["name"]: o for o in oip_outputs(logits, None, LABELS, verdict=judge(logits, m))}
    assert list(outputs) == ["logits", "probabilities", "label", "outlier", "outlier_score"]
    assert outputs["label"]["data"] == ["3", ""] and outputs["outlier"]["datatype"] == "BOOL"
    assert outputs["outlier"]["data"].tolist() == [False, True] and outputs["outlier_score"]["shape"] == [2]
    asked = oip_outputs(logits, [{"name": "label"}], LABELS, verdict=judge(logits, m), plain=True)
    assert asked[0]["data"] == ["3", "0"]  # the second one's best guess, all ten being equal


def test_the_shipped_model_says_how_it_was_calibrated_and_where_it_flags(manifest) -> None:
    assert manifest.calibration.fitted_on == "validation split" and manifest.calibration.temperature > 0
    assert manifest.outliers is not None and manifest.outliers.meaning == "not a digit"
    assert describe(manifest)["outliers"]["threshold"] == manifest.outliers.threshold
    old = read_manifest(SHIPPED / "1")  # made before calibration: served as it always was
    assert old.calibration.temperature == 1.0 and old.outliers is None


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def fashion(datasets_dir: Path) -> np.ndarray:
    """The first Fashion-MNIST test images (Debian's dataset-fashion-mnist, or the data folder's copy)."""
    folder = find_idx_folder(IDX_DATASETS["fashion-mnist"], datasets_dir)
    if folder is None:
        pytest.skip("Fashion-MNIST is missing: apt-get install dataset-fashion-mnist")
    return read_idx(next(folder.glob("t10k-images-idx3-ubyte*"))).numpy()[:20]


@pytest.mark.slow
def test_the_service_flags_a_blank_and_clothes_and_answers_a_digit(serve, fashion, datasets_dir) -> None:
    service = serve({"TRAINSERVE_MODEL_DIR": str(REPO / "models"), "TRAINSERVE_VERSION_POLICY": "latest:1"})
    url = f"{service.url}/v1/models/mnist-cnn:classify"
    digit = read_idx(datasets_dir / "mnist" / "t10k-images-idx3-ubyte.gz").numpy()[0]  # a 7
    red, dot = io.BytesIO(), np.full((200, 200), 255, np.uint8)
    Image.new("RGB", (64, 48), (255, 0, 0)).save(red, format="JPEG")
    dot[98:103, 98:103] = 0  # a single dot on the page: prepared for the model, a filled disc
    files = [("blank", _png(np.full((40, 40), 255, np.uint8))), ("shoe", _png(fashion[0])),
             ("seven", _png(digit)), ("red", red.getvalue()), ("dot", _png(dot))]
    body = requests.post(url, files=files, timeout=60).json()
    assert body["version"] == NEWEST.name
    blank, shoe, seven, solid, spot = body["predictions"]
    assert blank["outlier"] and blank["label"] is None and blank["outlier_score"] > 0.5
    assert shoe["outlier"] and shoe["label"] is None
    assert not seven["outlier"] and seven["label"] == "7"
    assert solid["outlier"] and spot["outlier"]  # the solid red JPEG and single dot
    plain = requests.post(f"{url}?plain=true", files=files[:1], timeout=60).json()["predictions"][0]
    assert plain["outlier"] and plain["label"] in LABELS
    clothes = requests.post(url, files=[(str(i), _png(f)) for i, f in enumerate(fashion)], timeout=60).json()
    assert sum(p["outlier"] for p in clothes["predictions"]) >= 18  # of 20
    oip = requests.post(f"{service.url}/v2/models/mnist-cnn/infer", timeout=60, json={
        "inputs": [{"name": "input", "shape": [2, 784], "datatype": "UINT8",
                    "data": np.concatenate([np.zeros(784, np.uint8), digit.ravel()]).tolist()}]}).json()
    outputs = {o["name"]: o["data"] for o in oip["outputs"]}
    assert outputs["outlier"] == [True, False] and outputs["label"] == ["", "7"]


@pytest.mark.parametrize(("entry", "value", "named"), [
    ("calibration", {"temperature": 0}, "temperature"),
    ("calibration", {"temperature": 1.5, "method": "platt"}, "method"),
    ("outliers", {"threshold": 1.5}, "threshold"),
    ("outliers", {"threshold": 0.5, "score": "energy"}, "score"),
])
def test_a_manifest_with_a_bad_calibration_or_threshold_is_refused(entry, value, named) -> None:
    from service.contract.manifest import Manifest, ManifestError

    data = json.loads((SHIPPED / "1" / "manifest.json").read_text()) | {entry: value}
    with pytest.raises(ManifestError, match=named):
        Manifest.from_dict(data)


def test_old_manifests_load_with_the_documented_defaults() -> None:
    from service.contract.manifest import Manifest

    data = json.loads((SHIPPED / "1" / "manifest.json").read_text())
    assert "calibration" not in data and "outliers" not in data  # written before issue 26
    m = Manifest.from_dict(data)
    assert m.calibration == Calibration() and m.outliers is None
    assert Manifest.from_dict(json.loads(json.dumps(m.to_dict()))) == m  # a re-written one reads the same
