"""Whole runs for every task, data kind and loss, and transfer from an artifact: real tiny data, short runs,
down to the published artifact and its reports."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from service.contract.manifest import read_manifest, verify_checksum
from training.config import ConfigError, TrainConfig
from training.engine import Diverged
from training.export import load_scripted
from training.run import run
from training.tabular import make_spiral


def _cancer_csv(path: Path) -> Path:
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([n.replace(" ", "_") for n in bunch.feature_names] + ["malignant"])
        pairs = zip(bunch.data.tolist(), bunch.target.tolist(), strict=True)
        writer.writerows([*row, 1 - t] for row, t in pairs)
    return path


def _cfg(tmp_path: Path, **values: object) -> TrainConfig:
    return TrainConfig(out=tmp_path / "models", run_dir=tmp_path / "runs", optimizer="adam", lr=3e-3,
                       **values)  # type: ignore[arg-type]


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_spiral_run_draws_decision_regions_and_standardises_inside(tmp_path: Path) -> None:
    folder = run(_cfg(tmp_path, dataset="spiral", arch="mlp", hidden=(32, 32), epochs=3, batch_size=32,
                      name="spiral"))
    manifest = read_manifest(folder)
    assert {"regions.png", "confusion.png", "curves.png", "attributions.png"} <= _files(folder)
    assert "mistakes.png" not in _files(folder)  # no images to show
    assert manifest.input.kind == "features" and manifest.input.features == ("x", "y")
    assert manifest.input.range is None and not manifest.input.accepts_uint8
    assert manifest.metrics["test_accuracy"] > 0.5  # three short epochs (the target run: docs/learning.md)
    # Raw coordinates go in: the module applies the training split's standardisation itself.
    source = make_spiral()
    module = load_scripted(folder / "model.pt")
    with torch.inference_mode():
        predicted = module(source.test.images).argmax(dim=1)
    assert float((predicted == source.test.labels).float().mean()) == pytest.approx(
        manifest.metrics["test_accuracy"], abs=1e-6)
    (card,) = (tmp_path / "runs").glob("spiral-*/card.md")
    assert "regions.png" in card.read_text() and "multiclass classifier" in card.read_text()


def test_csv_binary_run_reports_roc_and_stores_the_threshold(tmp_path: Path) -> None:
    path = _cancer_csv(tmp_path / "cancer.csv")
    folder = run(_cfg(tmp_path, dataset=f"csv:{path}", target=("malignant",), task="binary", arch="mlp",
                      hidden=(16,), epochs=2, batch_size=32, threshold=0.3, name="cancer"))
    manifest = read_manifest(folder)
    verify_checksum(manifest, folder)
    assert manifest.task == "binary" and manifest.threshold == 0.3 and manifest.output.shape == (1,)
    assert manifest.labels == ("not malignant", "malignant") and len(manifest.input.features) == 30
    assert {"roc_pr.png", "confusion.png", "curves.png"} <= _files(folder)
    assert "attributions.png" not in _files(folder)  # multi-class models only
    metrics = manifest.metrics
    assert 0.5 < metrics["roc_auc"] <= 1 and 0 <= metrics["f1"] <= 1 and len(metrics["confusion"]) == 2
    assert manifest.training["target"] == ["malignant"] and manifest.training["loss"] == "bce"
    assert set(manifest.input.scaling["mean"]) == set(manifest.input.features)


def test_multilabel_run_reports_per_label_scores(tmp_path: Path, mnist_slice: Path) -> None:
    folder = run(_cfg(tmp_path, dataset="mnist", data_dir=mnist_slice, download=False, task="multilabel",
                      label_set=("even=0,2,4,6,8", "ge5=5,6,7,8,9", "prime=2,3,5,7"), epochs=1,
                      batch_size=50, augment=False, val_fraction=0.1, name="props"))
    manifest = read_manifest(folder)
    assert manifest.task == "multilabel" and manifest.labels == ("even", "ge5", "prime")
    assert {"labels.png", "curves.png"} <= _files(folder) and "confusion.png" not in _files(folder)
    per_label = manifest.metrics["per_label"]
    assert set(per_label) == {"even", "ge5", "prime"}
    assert set(per_label["prime"]) == {"accuracy", "precision", "recall", "f1", "roc_auc",
                                       "average_precision"}
    assert 0 <= manifest.metrics["exact_match"] <= manifest.metrics["test_accuracy"] <= 1
    assert manifest.metrics["per_class_accuracy"]["even"] == per_label["even"]["accuracy"]


def test_mse_on_one_hot_trains_a_multiclass_model(tmp_path: Path) -> None:
    folder = run(_cfg(tmp_path, dataset="digits", arch="mlp", hidden=(64,), epochs=3, batch_size=32,
                      loss="mse", augment=False, name="digits-mse"))
    manifest = read_manifest(folder)
    assert manifest.training["loss"] == "mse" and manifest.task == "multiclass"
    assert manifest.metrics["test_accuracy"] > 0.5


def test_transfer_keeps_the_frozen_features_and_records_the_origin(tmp_path: Path, mnist_slice: Path) -> None:
    common = {"dataset": "mnist", "data_dir": mnist_slice, "download": False, "batch_size": 50,
              "augment": False, "val_fraction": 0.0, "arch": "cnn"}  # the compact net, whose head is net.7
    source = run(_cfg(tmp_path, epochs=1, name="base", **common))
    folder = run(_cfg(tmp_path, epochs=1, name="sevens", task="binary", positive=("7",), init_from=source,
                      freeze="features", **common))
    manifest = read_manifest(folder)
    origin = manifest.extra["init_from"]
    assert origin["sha256"] == read_manifest(source).sha256 and origin["frozen"] == "features"
    assert manifest.training["init_from"] == str(source) and manifest.output.shape == (1,)
    before = load_scripted(source / "model.pt").state_dict()
    after = load_scripted(folder / "model.pt").state_dict()
    assert set(before) == set(after)
    changed = sorted(k for k in before if before[k].shape != after[k].shape)
    assert changed == ["net.7.bias", "net.7.weight"]  # the new head: 1 output instead of 10
    for key in set(before) - set(changed):  # the features and the input normalisation, untouched
        assert torch.equal(before[key], after[key]), key
    assert manifest.metrics["test_accuracy"] > 0.85  # a new head on features learned from all ten digits
    reloaded = json.loads((folder / "manifest.json").read_text())
    assert reloaded["extra"]["init_from"]["name"] == "base"


def test_init_from_an_artifact_of_another_input_shape_is_refused(tmp_path: Path) -> None:
    source = run(_cfg(tmp_path, dataset="spiral", arch="mlp", hidden=(8,), epochs=1, name="tiny"))
    with pytest.raises(ConfigError, match=r"takes inputs of shape \[2\]"):
        run(_cfg(tmp_path, dataset="digits", epochs=1, init_from=source, name="bad"))
    with pytest.raises(ConfigError, match=r"manifest\.json does not exist"):
        run(_cfg(tmp_path, dataset="digits", epochs=1, init_from=tmp_path / "nowhere", name="bad"))


def test_a_two_class_csv_also_trains_as_multiclass(tmp_path: Path) -> None:
    path = _cancer_csv(tmp_path / "cancer.csv")  # softmax over two classes: the alternative to binary
    folder = run(_cfg(tmp_path, dataset=f"csv:{path}", target=("malignant",), arch="mlp", hidden=(8,),
                      epochs=2, batch_size=32, name="cancer-softmax"))
    manifest = read_manifest(folder)
    assert manifest.task == "multiclass" and manifest.output.shape == (2,)
    assert manifest.labels == ("not malignant", "malignant") and manifest.metrics["test_accuracy"] > 0.7


def test_a_diverging_run_stops_with_advice(tmp_path: Path) -> None:
    with pytest.raises(Diverged, match="lower --lr"):
        run(TrainConfig(dataset="spiral", arch="mlp", hidden=(16,), epochs=2, optimizer="sgd", lr=1e30,
                        schedule="none", out=tmp_path / "models", run_dir=tmp_path / "runs", name="boom"))
    assert not (tmp_path / "models" / "boom").exists()  # nothing published
