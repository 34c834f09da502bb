"""load_data and make_loader: splits, statistics, and batches that cover an epoch once per process."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training.data import ImageSet, channel_stats, load_data, make_loader
from training.datasets import DataError


def test_mnist_slice_with_validation_split(mnist_slice: Path) -> None:
    data = load_data("mnist", mnist_slice, download=False, val_fraction=0.1)
    assert (len(data.train), len(data.val), len(data.test)) == (900, 100, 300)
    assert data.input_shape == (1, 28, 28)
    assert data.mean[0] == pytest.approx(0.13, abs=0.01) and data.std[0] == pytest.approx(0.31, abs=0.01)
    assert data.identity() == {"name": "mnist", "source": str(mnist_slice / "mnist"), "train_examples": 900,
                               "val_examples": 100, "test_examples": 300}


def test_no_validation_split() -> None:
    data = load_data("digits", Path("unused"), val_fraction=0.0)
    assert len(data.val) == 0 and data.val.images.shape[1:] == (1, 8, 8)


def test_unknown_dataset() -> None:
    with pytest.raises(DataError, match="unknown dataset"):
        load_data("cifar10", Path("unused"))


def test_channel_stats_per_channel() -> None:
    images = torch.zeros(4, 3, 2, 2, dtype=torch.uint8)
    images[:, 1] = 255
    images[:2, 2] = 255
    mean, std = channel_stats(images)
    assert mean == pytest.approx((0.0, 1.0, 0.5))
    assert std[0] == pytest.approx(1e-3) and std[2] == pytest.approx(0.5164, abs=1e-3)


def _numbered(n: int) -> ImageSet:
    return ImageSet(torch.arange(n).view(n, 1, 1, 1), torch.arange(n) % 10)


def test_loader_yields_whole_batches_of_tensors() -> None:
    loader = make_loader(_numbered(10), batch_size=4, shuffle=False)
    batches = list(loader)
    assert [len(y) for _, y in batches] == [4, 4, 2]
    assert torch.equal(torch.cat([x for x, _ in batches]).flatten(), torch.arange(10))


def test_each_epoch_is_shuffled_differently_and_repeatably() -> None:
    loader = make_loader(_numbered(50), batch_size=50, shuffle=True, seed=7)
    orders = []
    for epoch in (1, 2, 1):
        loader.sampler.set_epoch(epoch)
        orders.append(next(iter(loader))[0].flatten())
    assert not torch.equal(orders[0], orders[1]) and torch.equal(orders[0], orders[2])
    assert sorted(orders[0].tolist()) == list(range(50))


def test_processes_get_disjoint_shares_of_an_epoch() -> None:
    shares = []
    for rank in (0, 1):
        loader = make_loader(_numbered(40), batch_size=8, shuffle=True, seed=1, rank=rank, world_size=2)
        loader.sampler.set_epoch(3)
        shares.append({int(v) for x, _ in loader for v in x.flatten()})
    assert not shares[0] & shares[1] and len(shares[0] | shares[1]) == 40
