"""The PNG reports: learning curves, confusion matrix, worst mistakes, drawn from real records."""

from __future__ import annotations

from pathlib import Path

import torch

from training import reports

PNG = b"\x89PNG\r\n\x1a\n"


def test_curves(tmp_path: Path) -> None:
    history = [{"epoch": e, "train_loss": 1 / e, "train_accuracy": 1 - 0.1 / e, "val_loss": 1.2 / e,
                "val_accuracy": 1 - 0.12 / e} for e in range(1, 5)]
    path = reports.plot_curves(history, tmp_path / "curves.png")
    assert path.read_bytes().startswith(PNG)


def test_confusion_small_and_large(tmp_path: Path) -> None:
    confusion = torch.diag(torch.full((10,), 100)) + torch.ones(10, 10, dtype=torch.int64)
    path = reports.plot_confusion(confusion, list("0123456789"), tmp_path / "a.png")
    assert path.read_bytes().startswith(PNG)
    labels = [f"class {i}" for i in range(30)]
    big = torch.eye(30, dtype=torch.int64) * 5
    assert reports.plot_confusion(big, labels, tmp_path / "b.png").read_bytes().startswith(PNG)


def test_mistakes_grid_grey_colour_and_none(tmp_path: Path) -> None:
    labels = torch.tensor([0, 1, 2, 3])
    predictions = torch.tensor([1, 1, 0, 3])
    losses = torch.tensor([2.0, 0.1, 3.0, 0.2])
    confidence = torch.tensor([0.9, 0.8, 0.95, 0.7])
    classes = ["zero", "one", "a very long class name", "three"]
    for channels in (1, 3):
        images = torch.randint(0, 256, (4, channels, 8, 8), dtype=torch.uint8)
        path = reports.plot_mistakes(images, labels, predictions, losses, confidence, classes,
                                     tmp_path / f"m{channels}.png")
        assert path.read_bytes().startswith(PNG)
    path = reports.plot_mistakes(images, labels, labels, losses, confidence, classes, tmp_path / "none.png")
    assert path.read_bytes().startswith(PNG)
