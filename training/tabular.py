"""Feature-vector data: ``--dataset csv:PATH`` (numeric columns, one or more target columns) and the spiral.

Features are kept as one float32 tensor ``[N, F]`` in ``ImageSet.images``; the net is an MLP whose input
width is F. Standardisation (per-feature mean and standard deviation of the training split) happens inside
the exported module, :class:`FeatureClassifier`, so the service applies exactly what training did.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from training.datasets import SPLIT_SEED, TEST_FRACTION, DataError, ImageSet, Source, holdout

SPIRAL_ARMS = 3
SPIRAL_POINTS = 1000  # per arm
SPIRAL_NOISE = 0.2  # radians of jitter on each point's angle: the arms stay separable, not trivially


class FeatureClassifier(nn.Module):
    """Wraps a net so that it takes raw feature values and standardises them inside."""

    if TYPE_CHECKING:  # the buffers, for mypy only: TorchScript cannot parse this module's string annotations
        mean: torch.Tensor
        inv_std: torch.Tensor

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1))
        self.register_buffer("inv_std", (1.0 / torch.tensor(list(std), dtype=torch.float32)).view(1, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x.to(self.mean.dtype) - self.mean) * self.inv_std)


def feature_stats(features: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-feature mean and standard deviation; a constant feature gets 1 so that it does not divide by 0."""
    values = features.double()
    std = values.std(dim=0) if len(values) > 1 else torch.ones(values.shape[1], dtype=torch.float64)
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    return tuple(values.mean(dim=0).tolist()), tuple(std.tolist())


def load_csv(path: Path, targets: Sequence[str], multilabel: bool) -> Source:
    """A CSV with a header row: the ``targets`` columns are labels, every other column a numeric feature.

    One target: its distinct values are the classes (a 0/1 column named C gives "not C" and "C"). Several
    (multilabel): each must hold 0 or 1. A non-numeric or missing value is a DataError naming the column
    and the line.
    """
    header, rows = _read_rows(path)
    missing = [t for t in targets if t not in header]
    if not targets or missing:
        raise DataError(f"{path}: target column(s) {missing or '(none given)'} not in the header "
                        f"{header}; name them with --target COLUMN")
    if len(targets) > 1 and not multilabel:
        raise DataError(f"{len(targets)} target columns {list(targets)} need --task multilabel")
    names = tuple(c for c in header if c not in targets)
    if not names:
        raise DataError(f"{path}: no feature columns left besides the targets {list(targets)}")
    columns = {c: i for i, c in enumerate(header)}
    features = torch.from_numpy(np.array([[_number(path, row, line, c, columns[c]) for c in names]
                                          for line, row in rows], dtype=np.float32))
    if multilabel:
        labels = torch.tensor([[_flag(path, row, line, t, columns[t]) for t in targets]
                               for line, row in rows], dtype=torch.float32)
        classes = tuple(targets)
    else:
        classes, labels = _classes([(line, row[columns[targets[0]]]) for line, row in rows], path, targets[0])
    train, test = holdout(ImageSet(features, labels), TEST_FRACTION)
    return Source(name=f"csv:{path.name}", location=str(path), classes=classes, train=train, test=test,
                  features=names)


def make_spiral(arms: int = SPIRAL_ARMS, points: int = SPIRAL_POINTS, noise: float = SPIRAL_NOISE,
                seed: int = SPLIT_SEED) -> Source:
    """The 2-D spiral: ``arms`` interleaved arms of ``points`` each, one class per arm, 20 % held out."""
    generator = torch.Generator().manual_seed(seed)
    radius = torch.linspace(0.05, 1.0, points).repeat(arms)
    arm = torch.arange(arms).repeat_interleave(points)
    jitter = noise * torch.randn(arms * points, generator=generator)
    angle = radius * 4.0 + arm * (2 * math.pi / arms) + jitter
    xy = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)
    train, test = holdout(ImageSet(xy.float(), arm.long()), TEST_FRACTION)
    return Source(name="spiral", location=f"generated: {arms} arms x {points} points, noise {noise}",
                  classes=tuple(f"arm {i}" for i in range(arms)), train=train, test=test, features=("x", "y"))


def _read_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    if not path.is_file():
        raise DataError(f"{path} is not a file. --dataset csv:PATH needs a CSV file with a header row.")
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = [name.strip() for name in next(reader, [])]
            rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path} cannot be read as CSV: {exc}") from None
    if not header or len(set(header)) != len(header) or not all(header):
        raise DataError(f"{path}: the header row must name every column once, got {header}")
    for line, row in rows:
        if len(row) != len(header):
            raise DataError(f"{path} line {line}: {len(row)} values for the {len(header)} columns")
    if len(rows) < 10:
        raise DataError(f"{path} holds {len(rows)} data rows; a train and a test split need at least 10")
    return header, rows


def _number(path: Path, row: list[str], line: int, column: str, index: int) -> float:
    text = row[index].strip()
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not text or not math.isfinite(value):
        what = "is missing" if not text else f"is {text!r}, not a number"
        raise DataError(f"{path} line {line}, column {column!r}: the value {what}. Features must be numeric "
                        "(encode categories as numbers, fill or drop missing values first).")
    return value


def _flag(path: Path, row: list[str], line: int, column: str, index: int) -> float:
    value = _number(path, row, line, column, index)
    if value not in (0.0, 1.0):
        raise DataError(f"{path} line {line}, target column {column!r}: {row[index]!r} must be 0 or 1")
    return value


def _classes(values: list[tuple[int, str]], path: Path, column: str) -> tuple[tuple[str, ...], torch.Tensor]:
    """Class names (sorted, numerically when they all are numbers) and each row's class index."""
    for line, text in values:
        if not text.strip():
            raise DataError(f"{path} line {line}, target column {column!r}: the value is missing")
    texts = [text.strip() for _, text in values]
    distinct = sorted(set(texts), key=lambda t: (0, float(t), t) if _is_number(t) else (1, 0.0, t))
    if len(distinct) < 2:
        raise DataError(f"{path}: target column {column!r} holds one value ({distinct}); a classifier "
                        "needs two")
    index = {t: i for i, t in enumerate(distinct)}
    labels = torch.tensor([index[t] for t in texts], dtype=torch.int64)
    if [float(t) for t in distinct if _is_number(t)] == [0.0, 1.0] and len(distinct) == 2:
        return (f"not {column}", column), labels
    return tuple(distinct), labels


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False
