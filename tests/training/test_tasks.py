"""Tasks and losses: what each loss computes, which task takes which loss, and what evaluation counts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from training.config import ConfigError, TrainConfig
from training.data import load_data
from training.datasets import DataError
from training.targets import TargetSpec, parse_label_set
from training.tasks import Objective, summarise

LOGITS = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]])


def test_multiclass_losses() -> None:
    y = torch.tensor([0, 2])
    ce = Objective(loss="cross-entropy").losses(LOGITS, y)
    assert torch.allclose(ce, F.cross_entropy(LOGITS, y, reduction="none"))
    assert torch.allclose(Objective(loss="nll").losses(LOGITS, y), ce)
    brier = Objective(loss="mse").losses(LOGITS, y)
    one_hot = torch.tensor([[1.0, 0, 0], [0, 0, 1.0]])
    assert torch.allclose(brier, ((LOGITS.softmax(1) - one_hot) ** 2).sum(1))


def test_sigmoid_losses_and_decisions() -> None:
    y = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    bce = Objective(task="multilabel", loss="bce").losses(LOGITS, y)
    assert torch.allclose(bce, F.binary_cross_entropy_with_logits(LOGITS, y, reduction="none").mean(1))
    mse = Objective(task="multilabel", loss="mse").losses(LOGITS, y)
    assert torch.allclose(mse, ((torch.sigmoid(LOGITS) - y) ** 2).mean(1))
    strict = Objective(task="multilabel", threshold=0.8)
    assert strict.decide(LOGITS).tolist() == [[1, 0, 0], [0, 0, 1]]
    assert strict.correct(LOGITS, y).item() == pytest.approx(2 / 3 + 1)


@pytest.mark.parametrize(("task", "loss", "message"), [
    ("binary", "cross-entropy", "a binary model (one sigmoid per output) takes bce, mse"),
    ("multilabel", "nll", "multilabel"),
    ("multiclass", "bce", "multiclass (softmax) model takes cross-entropy, nll, mse"),
])
def test_a_loss_that_does_not_fit_the_task_is_refused(task: str, loss: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        TrainConfig(task=task, loss=loss)


def test_each_task_has_its_usual_loss() -> None:
    assert [TrainConfig(task=t).loss for t in ("multiclass", "binary", "multilabel")] == [
        "cross-entropy", "bce", "bce"]


def test_binary_and_multilabel_evaluations_count_right() -> None:
    logits = torch.tensor([[3.0], [-2.0], [0.5], [-0.1]])
    truth = torch.tensor([[1.0], [0.0], [0.0], [1.0]])
    binary = summarise(Objective(task="binary"), logits, truth, 2)
    assert binary.confusion.tolist() == [[1, 1], [1, 1]] and binary.accuracy == 0.5
    assert binary.predictions.tolist() == [1, 0, 1, 0] and binary.per_class_accuracy == [0.5, 0.5]
    truth = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    multi = summarise(Objective(task="multilabel"), LOGITS, truth, 3)
    assert multi.confusion.shape == (3, 2, 2) and multi.accuracy == pytest.approx(5 / 6)
    assert multi.per_class_accuracy == pytest.approx([1.0, 1.0, 0.5])


def test_binary_from_a_class_dataset(mnist_slice: Path) -> None:
    data = load_data("mnist", mnist_slice, download=False, targets=TargetSpec(task="binary", positive=("7",)))
    assert data.classes == ("not 7", "7") and data.train.labels.shape == (1000, 1)
    sevens = int(data.train.labels.sum())
    assert 80 < sevens < 130  # about a tenth of the digits


def test_multilabel_from_label_sets(mnist_slice: Path) -> None:
    spec = TargetSpec(task="multilabel", label_sets=("even=0,2,4,6,8", "prime=2,3,5,7"))
    data = load_data("mnist", mnist_slice, download=False, targets=spec)
    assert data.classes == ("even", "prime") and data.test.labels.shape == (300, 2)
    assert not bool((data.test.labels.sum(dim=1) == 2).all())  # 2 is both; most digits are not


@pytest.mark.parametrize(("spec", "message"), [
    (TargetSpec(task="binary"), "needs --positive"),
    (TargetSpec(task="binary", positive=("seven",)), "not among the dataset's classes"),
    (TargetSpec(task="multilabel"), "needs --label-set"),
    (TargetSpec(task="multilabel", label_sets=("odd=1,3,x",)), "not among the dataset's classes"),
])
def test_target_mistakes_are_data_errors(mnist_slice: Path, spec: TargetSpec, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_data("mnist", mnist_slice, download=False, targets=spec)


def test_label_set_syntax() -> None:
    assert parse_label_set("ge5=5,6, 7") == ("ge5", ("5", "6", "7"))
    for bad in ("even", "=1,2", "even="):
        with pytest.raises(ValueError, match="NAME=CLASS"):
            parse_label_set(bad)
