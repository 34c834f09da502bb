"""Outlier exposure: the images a digit model trains on as "none of the classes", and how they are drawn.

Fashion-MNIST's training split (Debian's ``dataset-fashion-mnist``, or ``<data-dir>/fashion-mnist/``) and
generated non-digits (``training/nondigits.py``); the test splits of both are kept for measuring the
"not a digit" score at export (``training/trust.py``), never trained on. Image models of MNIST only:
the outliers of another dataset are other images.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from training import nondigits
from training.datasets import IDX_DATASETS, load_idx_dataset

OUTLIER_DATASET = "fashion-mnist"
# Seeds of the generated non-digits: one set to train on, one to choose the threshold with, one to measure
# on (never the same images).
TRAIN_SEED, TEST_SEED, VAL_SEED = 26, 2026, 4711
GENERATED_TRAIN = 12_000
GENERATED_TEST = 2_500
# Noise twice as often as the other kinds: it varies most (four styles, raw or prepared), and every noise
# image must be flagged.
TRAIN_KINDS = ("blank", "solid", "noise", "noise", "scribble", "blob")


def applies(dataset: str, task: str) -> bool:
    """Whether ``dataset`` and ``task`` train with outlier exposure and get a "not a digit" score."""
    return dataset == "mnist" and task == "multiclass"


@dataclass(frozen=True)
class OutlierSets:
    """Non-digits to train on, and the held-out ones the export measures the score on."""

    # uint8 [N, 1, 28, 28] each: Fashion-MNIST's training split, and generated non-digits; a batch draws
    # from both alike, so that the few kinds of generated images are not lost among 60,000 clothes.
    train: tuple[torch.Tensor, ...]
    fashion_test: torch.Tensor  # uint8 [N, 1, 28, 28]
    generated_test: torch.Tensor  # uint8 [N, 1, 28, 28]
    generated_kinds: torch.Tensor  # int64 [N]: index into nondigits.KINDS
    generated_val: torch.Tensor  # another draw, for choosing the threshold (never measured on)
    generated_val_kinds: torch.Tensor
    source: str  # where the Fashion-MNIST files came from


def load_outliers(data_dir: Path, download: bool) -> OutlierSets:
    """Fashion-MNIST (DataError naming the files and folder when it is missing) and generated non-digits."""
    fashion = load_idx_dataset(IDX_DATASETS[OUTLIER_DATASET], data_dir, download)
    generated, _ = nondigits.generate(GENERATED_TRAIN, TRAIN_SEED, TRAIN_KINDS)
    test, kinds = nondigits.generate(GENERATED_TEST, TEST_SEED)
    val, val_kinds = nondigits.generate(GENERATED_TEST, VAL_SEED)
    return OutlierSets(train=(fashion.train.images, generated), fashion_test=fashion.test.images,
                       generated_test=test, generated_kinds=kinds, generated_val=val,
                       generated_val_kinds=val_kinds, source=fashion.location)


def batches(pools: tuple[torch.Tensor, ...], size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless random batches of ``size`` images, an equal share from each pool (drawn with replacement, so
    any length of run works)."""
    shares = [size // len(pools) + (k < size % len(pools)) for k in range(len(pools))]
    while True:
        yield torch.cat([pool[torch.randint(len(pool), (n,), generator=generator)]
                         for pool, n in zip(pools, shares, strict=True) if n])
