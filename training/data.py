"""Data for a run: train / validation / test splits in memory, their statistics, and batch loaders."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler
from torch.utils.data import Dataset as TorchDataset

from training.datasets import (
    IDX_DATASETS,
    DataError,
    ImageSet,
    Source,
    holdout,
    load_digits,
    load_idx_dataset,
)
from training.folders import load_folder
from training.tabular import feature_stats, load_csv, make_spiral
from training.targets import TargetSpec, derive

__all__ = ["DataError", "DataSplits", "ImageSet", "load_data", "make_loader"]

MULTICLASS = TargetSpec()  # the dataset's own classes


@dataclass(frozen=True)
class DataSplits:
    """The three splits of a run, their class names, and the statistics the model normalises with."""

    source: Source
    train: ImageSet
    val: ImageSet  # empty when --val-fraction is 0
    mean: tuple[float, ...]  # per channel, of train pixels scaled to [0, 1]; per feature for feature sets
    std: tuple[float, ...]

    @property
    def features(self) -> tuple[str, ...]:
        """Feature names of a feature-vector set (CSV, spiral); empty for images."""
        return self.source.features

    @property
    def test(self) -> ImageSet:
        """The held-out test split, evaluated once at the end of a run."""
        return self.source.test

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names; index i is label i."""
        return self.source.classes

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One example, channels first (C, H, W); (F,) for feature vectors."""
        return tuple(self.train.images.shape[1:])

    def identity(self) -> dict[str, Any]:
        """The manifest's ``dataset`` entry."""
        return {"name": self.source.name, "source": self.source.location,
                "train_examples": len(self.train), "val_examples": len(self.val),
                "test_examples": len(self.test)}


def load_data(dataset: str, data_dir: Path, *, download: bool = True, val_fraction: float = 0.0,
              image_size: int = 28, workers: int = 0, targets: TargetSpec = MULTICLASS) -> DataSplits:
    """Read ``dataset`` (mnist | fashion-mnist | digits | folder:PATH | csv:PATH | spiral), shape its targets
    for the task, and split off validation examples."""
    source = read_source(dataset, data_dir, download=download, image_size=image_size, workers=workers,
                         targets=targets)
    source = derive(source, targets)
    train, val = holdout(source.train, val_fraction) if val_fraction > 0 else (source.train, _empty(source))
    mean, std = feature_stats(train.images) if source.features else channel_stats(train.images)
    return DataSplits(source=source, train=train, val=val, mean=mean, std=std)


def read_source(dataset: str, data_dir: Path, *, download: bool, image_size: int, workers: int,
                targets: TargetSpec = MULTICLASS) -> Source:
    """Dispatch on the dataset's name."""
    if dataset.startswith("csv:"):
        path = Path(dataset.removeprefix("csv:")).expanduser()
        return load_csv(path, targets.columns, multilabel=targets.task == "multilabel")
    if dataset == "spiral":
        return make_spiral()
    if dataset in IDX_DATASETS:
        return load_idx_dataset(IDX_DATASETS[dataset], data_dir, download)
    if dataset == "digits":
        return load_digits()
    if dataset.startswith("folder:"):
        return load_folder(Path(dataset.removeprefix("folder:")).expanduser(), image_size, workers)
    raise DataError(f"unknown dataset {dataset!r}")


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 images, on the [0, 1] scale."""
    pixels = images.transpose(0, 1).reshape(images.shape[1], -1).double() / 255.0
    std = pixels.std(dim=1).clamp_min(1e-3)  # a constant channel must not divide by zero
    return tuple(pixels.mean(dim=1).tolist()), tuple(std.tolist())


class _InMemory(TorchDataset[tuple[torch.Tensor, torch.Tensor]]):
    """Batches by tensor indexing: the loader asks for a whole batch of indices at once."""

    def __init__(self, data: ImageSet) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.data.images[index], self.data.labels[index]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices)
        return self.data.images[index], self.data.labels[index]


def _whole_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return batch


def make_loader(data: ImageSet, batch_size: int, *, shuffle: bool, seed: int = 0, workers: int = 0,
                pin_memory: bool = False, rank: int = 0, world_size: int = 1) -> DataLoader:
    """Batches of ``(uint8 images, int64 labels)``; with ``world_size > 1``, this rank's share of each epoch.

    Call ``loader.sampler.set_epoch(epoch)`` before each epoch so every epoch is shuffled differently (and
    identically on every rank).
    """
    sampler: DistributedSampler[int] = DistributedSampler(_InMemory(data), num_replicas=world_size, rank=rank,
                                                          shuffle=shuffle, seed=seed, drop_last=False)
    # torch types collate_fn as taking a list of examples; with __getitems__ it takes what that returns
    return DataLoader(_InMemory(data), batch_size=batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=_whole_batch,  # type: ignore[arg-type]
                      pin_memory=pin_memory, persistent_workers=workers > 0)


def _empty(source: Source) -> ImageSet:
    images, labels = source.train.images, source.train.labels
    return ImageSet(images.new_empty((0, *images.shape[1:])), labels.new_empty((0, *labels.shape[1:])))
