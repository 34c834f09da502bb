"""Dataset readers: IDX files in either layout, the 8x8 digits, a repeatable hold-out split, clear errors."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest
import torch

from training.datasets import (
    IDX_DATASETS,
    IDX_FILES,
    DataError,
    ImageSet,
    holdout,
    load_digits,
    load_idx_dataset,
    read_idx,
)

MNIST = IDX_DATASETS["mnist"]


def test_reads_the_mnist_slice(mnist_slice: Path) -> None:
    source = load_idx_dataset(MNIST, mnist_slice, download=False)
    assert source.train.images.shape == (1000, 1, 28, 28) and source.train.images.dtype == torch.uint8
    assert source.test.labels.shape == (300,) and source.test.labels.dtype == torch.int64
    assert source.classes == tuple("0123456789")
    assert source.train.labels[:5].tolist() == [5, 0, 4, 1, 9]  # MNIST's famous first five
    assert (source.ink, source.image_preprocessing) == ("light", "mnist")


def test_finds_torchvisions_layout_uncompressed(mnist_slice: Path, tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for stem in IDX_FILES:
        (raw / stem).write_bytes(gzip.decompress((mnist_slice / "mnist" / f"{stem}.gz").read_bytes()))
    source = load_idx_dataset(MNIST, tmp_path, download=False)
    assert len(source.train) == 1000 and source.location == str(raw)


def test_missing_files_name_the_files_and_the_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_idx_dataset(MNIST, tmp_path, download=False)
    message = str(info.value)
    assert "train-images-idx3-ubyte.gz" in message and "t10k-labels-idx1-ubyte.gz" in message
    assert str(tmp_path.resolve() / "mnist") in message and "--no-download" in message


def test_truncated_file_is_a_data_error(mnist_slice: Path, tmp_path: Path) -> None:
    shutil.copytree(mnist_slice / "mnist", tmp_path / "mnist")
    path = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-100]))
    with pytest.raises(DataError, match="truncated"):
        read_idx(path)


def test_not_an_idx_file(tmp_path: Path) -> None:
    path = tmp_path / "notes"
    path.write_bytes(b"hello world, not an IDX file")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(path)


def test_digits_come_as_uint8_images_split_80_20() -> None:
    source = load_digits()
    assert source.train.images.shape[1:] == (1, 8, 8)
    assert int(source.train.images.max()) == 255
    assert len(source.train) + len(source.test) == 1797
    assert abs(len(source.test) - 0.2 * 1797) < 10


def test_holdout_is_stratified_and_repeatable() -> None:
    labels = torch.arange(10).repeat_interleave(50)
    data = ImageSet(torch.arange(500).view(500, 1, 1, 1), labels)
    kept, held = holdout(data, 0.1)
    _, again_held = holdout(data, 0.1)
    assert torch.equal(held.labels.bincount(), torch.full((10,), 5))
    assert torch.equal(held.images, again_held.images) and len(kept) == 450
    assert not set(kept.images.flatten().tolist()) & set(held.images.flatten().tolist())
