"""run(): a whole training run in-process on small real datasets, down to the published artifact."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from service.contract.manifest import read_manifest, verify_checksum
from training.config import TrainConfig
from training.data import load_data, make_loader
from training.datasets import IDX_DATASETS, load_idx_dataset
from training.engine import evaluate
from training.export import load_scripted
from training.run import run


def test_digits_run_publishes_a_complete_artifact(tmp_path: Path) -> None:
    cfg = TrainConfig(dataset="digits", arch="cnn", epochs=3, batch_size=64, lr=0.05, val_fraction=0.1,
                      name="digits-cnn", out=tmp_path / "models", run_dir=tmp_path / "runs",
                      formats=())  # TorchScript only: the other formats have their own tests
    folder = run(cfg)
    assert folder == tmp_path / "models" / "digits-cnn" / "1"
    manifest = read_manifest(folder)
    verify_checksum(manifest, folder)
    assert manifest.metrics["test_accuracy"] > 0.8
    assert set(manifest.metrics["per_class_accuracy"]) == set("0123456789")
    assert manifest.input.shape == (1, 8, 8) and manifest.input.image_preprocessing == "resize"
    # The widths the net was built with are recorded even where the config left them to the net.
    built = dataclasses.replace(cfg, widths=(12, 24, 48))
    assert manifest.training == json.loads(json.dumps(built.to_dict()))
    assert manifest.dataset["name"] == "digits" and manifest.dataset["val_examples"] > 0
    assert manifest.extra["epochs_run"] == 3 and manifest.extra["macs_per_example"] > 0
    reports = {"curves.png", "confusion.png", "mistakes.png", "attributions.png", "metrics.jsonl"}
    assert reports <= {p.name for p in folder.iterdir()}
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [row.get("epoch") for row in lines] == [1, 2, 3, None] and "val_accuracy" in lines[0]
    assert lines[-1]["test_accuracy"] == pytest.approx(manifest.metrics["test_accuracy"], abs=1e-6)


def test_explicit_version_and_no_validation(tmp_path: Path) -> None:
    cfg = TrainConfig(dataset="digits", arch="mlp", hidden=(32,), activation="tanh", epochs=1,
                      optimizer="adamw", lr=3e-3, schedule="cosine", augment=False, val_fraction=0.0,
                      name="digits-mlp", version="7", out=tmp_path, run_dir=tmp_path / "runs",
                      formats=("exported",))
    folder = run(cfg)
    assert folder == tmp_path / "digits-mlp" / "7"
    manifest = read_manifest(folder)
    assert "val_accuracy" not in manifest.metrics
    assert [f.format for f in manifest.formats] == ["torchscript", "exported"]


def test_a_folder_of_pngs_trains_into_a_servable_artifact(mnist_slice: Path, tmp_path: Path) -> None:
    mnist = load_idx_dataset(IDX_DATASETS["mnist"], mnist_slice, download=False)
    for digit, name in ((3, "three"), (7, "seven")):
        (tmp_path / "pngs" / name).mkdir(parents=True)
        for i, image in enumerate(mnist.train.images[mnist.train.labels == digit][:40]):
            Image.fromarray(image[0].numpy()).save(tmp_path / "pngs" / name / f"{i}.png")
    cfg = TrainConfig(dataset=f"folder:{tmp_path / 'pngs'}", arch="cnn", epochs=8, batch_size=16, lr=0.05,
                      val_fraction=0.0, image_size=28, name="pngs-cnn", out=tmp_path / "models",
                      run_dir=tmp_path / "runs", formats=())
    folder = run(cfg)
    manifest = read_manifest(folder)
    assert manifest.labels == ("seven", "three") and manifest.input.shape == (1, 28, 28)
    assert manifest.metrics["test_accuracy"] >= 0.85
    model = load_scripted(folder / "model.pt")
    sevens = mnist.test.images[mnist.test.labels == 7][:20]
    with torch.inference_mode():
        predicted = model(sevens).argmax(dim=1)
    assert np.mean(predicted.numpy() == 0) >= 0.8  # "seven" is label 0


def test_ema_and_widths_reach_the_artifact_and_a_fine_tune_of_it(tmp_path: Path) -> None:
    # A constant learning rate keeps the weights moving, so the average and the trained weights differ.
    cfg = TrainConfig(dataset="digits", arch="cnn", widths=(8, 16, 24), ema=0.9, epochs=3, batch_size=64,
                      lr=0.05, schedule="none", val_fraction=0.2, name="digits-cnn", out=tmp_path / "models",
                      run_dir=tmp_path / "runs", formats=())
    folder = run(cfg)
    manifest = read_manifest(folder)
    assert manifest.training["widths"] == [8, 16, 24] and manifest.training["ema"] == 0.9
    weights = load_scripted(folder / "model.pt").state_dict().items()
    assert [w.shape[0] for key, w in weights if key.startswith("net.") and w.dim() == 4] == [8, 16, 24]
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()][:-1]
    assert all({"val_loss", "raw_val_loss", "raw_val_accuracy"} <= set(row) for row in rows)
    last = rows[-1]
    assert abs(last["val_loss"] - last["raw_val_loss"]) > 1e-4
    # What was exported is the average: its validation loss, not the trained weights'.
    data = load_data("digits", cfg.data_dir, download=False, val_fraction=cfg.val_fraction)
    exported = evaluate(load_scripted(folder / "model.pt"), make_loader(data.val, 100, shuffle=False),
                        torch.device("cpu"), 10)
    assert exported.loss == pytest.approx(last["val_loss"], abs=1e-5)
    assert manifest.metrics["val_loss"] == pytest.approx(last["val_loss"], abs=1e-6)
    # A fine-tune starts from the artifact's own widths, whatever its own settings say.
    tuned = run(dataclasses.replace(cfg, widths=(), ema=0.0, epochs=1, init_from=folder, freeze="features",
                                    name="digits-tuned"))
    assert read_manifest(tuned).training["widths"] == [8, 16, 24]
