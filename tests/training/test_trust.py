"""Calibration and the "not a digit" threshold, computed at export by a small real run on real data, and
the same verdict given by the service's functions on the exported model's outputs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from service.contract.manifest import read_manifest
from service.web.confidence import calibrated, judge
from training.calibration import decisions, fit_temperature, reliability
from training.config import TrainConfig
from training.datasets import IDX_DATASETS, find_idx_folder, load_idx_dataset
from training.export import load_scripted
from training.run import run
from training.tasks import Objective
from training.trust import choose_threshold


@pytest.fixture(scope="module")
def small_run(mnist_slice: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One short epoch of the recipe on 1,000 real MNIST digits (300 test), with outlier exposure."""
    if find_idx_folder(IDX_DATASETS["fashion-mnist"], mnist_slice) is None:
        pytest.skip("Fashion-MNIST is missing: apt-get install dataset-fashion-mnist")
    tmp = tmp_path_factory.mktemp("trust")
    cfg = TrainConfig(dataset="mnist", data_dir=mnist_slice, download=False, arch="cnn", epochs=2,
                      batch_size=50, lr=0.05, val_fraction=0.2, clean_epochs=0, threads=1,
                      out=tmp / "models", run_dir=tmp / "runs", formats=(), flag_rate=0.05)
    return run(cfg)


def test_the_manifest_records_the_temperature_the_threshold_and_what_they_measure(small_run: Path) -> None:
    manifest = read_manifest(small_run)
    assert manifest.calibration.fitted_on == "validation split"
    assert manifest.calibration.examples == manifest.dataset["val_examples"] > 150
    assert 0.05 <= manifest.calibration.temperature <= 20
    assert manifest.calibration.val_loss_after <= manifest.calibration.val_loss_before
    spec = manifest.outliers
    assert spec is not None and spec.flag_rate == 0.05 and 0 < spec.threshold <= 1
    metrics = manifest.metrics
    if "lowered" in spec.chosen_on:  # a blank, solid or noise validation image scored below the digits'
        assert metrics["val_flagged"] >= 0.04
    else:
        assert metrics["val_flagged"] == pytest.approx(0.05, abs=0.011)  # 10 of the 200 validation digits
    for key in ("test_ece", "other_style_ece", "other_style_accuracy", "ood_auroc_fashion_mnist",
                "ood_auroc_generated", "test_flagged", "fashion_mnist_flagged"):
        assert 0 <= metrics[key] <= 1, key
    assert metrics["other_style_examples"] >= 1000
    # Two epochs on 800 digits already tell clothes and blank fields from digits, if not perfectly.
    assert metrics["ood_auroc_fashion_mnist"] > 0.8 and metrics["generated_flagged"]["blank"] == 1.0
    assert {"reliability.png", "outliers.png"} <= {p.name for p in small_run.iterdir()}


def test_the_service_flags_what_the_export_measured(small_run: Path, mnist_slice: Path) -> None:
    manifest = read_manifest(small_run)
    model = load_scripted(small_run / "model.pt")
    fashion = load_idx_dataset(IDX_DATASETS["fashion-mnist"], mnist_slice, download=False).test.images[:500]
    digits = load_idx_dataset(IDX_DATASETS["mnist"], mnist_slice, download=False).test.images
    with torch.inference_mode():
        clothes, numbers = model(fashion).numpy(), model(digits).numpy()
    fashion_flagged = judge(calibrated(clothes, manifest), manifest).flagged.mean()
    digits_flagged = judge(calibrated(numbers, manifest), manifest).flagged.mean()
    assert fashion_flagged > digits_flagged
    # The export measured these on the same test digits (in float64): the service agrees.
    assert digits_flagged == pytest.approx(manifest.metrics["test_flagged"], abs=0.01)
    assert fashion_flagged == pytest.approx(manifest.metrics["fashion_mnist_flagged"], abs=0.06)


def test_temperature_fitting_undoes_a_known_overconfidence(small_run: Path, mnist_slice: Path) -> None:
    model = load_scripted(small_run / "model.pt")
    test = load_idx_dataset(IDX_DATASETS["mnist"], mnist_slice, download=False).test
    with torch.inference_mode():
        logits = model(test.images).double()
    objective = Objective()
    fitted = fit_temperature(logits, test.labels, objective)
    # The same logits made three times as confident need three times the temperature.
    assert fit_temperature(logits * 3, test.labels, objective) == pytest.approx(3 * fitted, rel=0.02)
    before = reliability(*decisions(logits * 3, test.labels, objective)).ece
    after = reliability(*decisions(logits * 3, test.labels, objective, 3 * fitted)).ece
    assert after < before


def test_reliability_bins_count_every_decision_once() -> None:
    confidence = torch.tensor([0.05, 0.5, 0.51, 0.99, 1.0], dtype=torch.float64)
    correct = torch.tensor([False, True, False, True, True])
    curve = reliability(confidence, correct, bins=10)
    assert sum(curve.counts) == 5 and curve.counts[9] == 2 and curve.counts[5] == 2
    assert curve.accuracy[5] == 0.5 and curve.confidence[9] == pytest.approx(0.995)
    expected = (0.05 + abs(0.505 - 0.5) * 2 + abs(0.995 - 1.0) * 2) / 5
    assert curve.ece == pytest.approx(expected)


def test_a_sigmoid_model_is_calibrated_per_output() -> None:
    logits = torch.tensor([[4.0, -4.0], [0.2, 3.0]], dtype=torch.float64)
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    confidence, correct = decisions(logits, targets, Objective(task="multilabel", loss="bce"))
    assert confidence.shape == (4,) and correct.tolist() == [True, True, False, True]
    assert np.all(confidence.numpy() >= 0.5)
    assert dataclasses.is_dataclass(reliability(confidence, correct))


def test_the_threshold_flags_the_chosen_share_of_digits_and_every_must_flag_image() -> None:
    digits = torch.linspace(0, 0.5, 201, dtype=torch.float64)  # scores of 201 validation digits
    kinds = torch.tensor([0, 1, 2, 3, 4])  # blank, solid, noise, scribble, blob
    threshold, lowered = choose_threshold(digits, torch.tensor([0.9, 0.9, 0.8, 0.1, 0.2]), kinds, 0.05)
    assert not lowered and threshold == pytest.approx(0.475)  # 10 of 201 digits reach it; a scribble may not
    threshold, lowered = choose_threshold(digits, torch.tensor([0.9, 0.9, 0.3, 0.1, 0.2]), kinds, 0.05)
    assert lowered and threshold < 0.3  # the noise image must be flagged
