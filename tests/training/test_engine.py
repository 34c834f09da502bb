"""The engine on real MNIST batches and a real tiny net: optimisation lowers the loss, evaluation adds up."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from training.config import ARCHITECTURES
from training.data import DataSplits, load_data, make_loader
from training.engine import evaluate, pixels, train_one_epoch
from training.export import PixelClassifier
from training.nets import build_net
from training.optim import build_optimizer

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def mnist(mnist_slice: Path) -> DataSplits:
    return load_data("mnist", mnist_slice, download=False)


def _model(mnist: DataSplits, arch: str = "cnn") -> PixelClassifier:
    torch.manual_seed(0)
    return PixelClassifier(build_net(arch, mnist.input_shape, 10), mnist.mean, mnist.std)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_one_optimisation_step_lowers_the_loss(mnist: DataSplits, arch: str) -> None:
    model = _model(mnist, arch)
    images, labels = mnist.train.images[:64], mnist.train.labels[:64]

    def loss() -> float:
        model.eval()  # batch statistics aside, the same function before and after the step
        with torch.no_grad():
            return F.cross_entropy(model(pixels(images, CPU)), labels).item()

    before = loss()
    optimizer = build_optimizer("sgd", model, lr=0.05, momentum=0.0)
    train_one_epoch(model, [(images, labels)], optimizer, CPU)
    assert loss() < before


def test_an_epoch_learns_and_reports_progress(mnist: DataSplits) -> None:
    model = _model(mnist)
    optimizer = build_optimizer("adam", model, lr=3e-3)
    seen: list[tuple[int, float, float]] = []
    stats = train_one_epoch(model, make_loader(mnist.train, 50, shuffle=True), optimizer, CPU,
                            on_step=lambda *progress: seen.append(progress), report_every=5)
    assert stats.examples == 1000 and [s for s, _, _ in seen] == [5, 10, 15, 20]
    assert 0 < stats.loss < 2.3 and stats.accuracy > 0.3  # better than chance after 20 small steps
    result = evaluate(model, make_loader(mnist.test, 128, shuffle=False), CPU, num_classes=10)
    assert result.accuracy > 0.5


def test_evaluation_records_add_up(mnist: DataSplits) -> None:
    result = evaluate(_model(mnist), make_loader(mnist.test, 128, shuffle=False), CPU, num_classes=10)
    assert result.confusion.shape == (10, 10) and int(result.confusion.sum()) == 300
    assert result.accuracy == pytest.approx(float(result.confusion.diagonal().sum()) / 300)
    assert result.losses.shape == result.predictions.shape == result.confidence.shape == (300,)
    assert result.loss == pytest.approx(float(result.losses.mean()), rel=1e-5)
    per_class = result.per_class_accuracy
    assert len(per_class) == 10 and all(0.0 <= a <= 1.0 for a in per_class)


def test_evaluate_needs_batches() -> None:
    with pytest.raises(ValueError, match="at least one batch"):
        evaluate(torch.nn.Identity(), [], CPU, num_classes=2)
