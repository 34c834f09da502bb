"""folder:PATH datasets: class sub-folders of images become a labelled, split, in-memory dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.datasets import DataError
from training.folders import load_folder


def _write(folder: Path, count: int, value: int, mode: str = "L", size: int = 20) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = np.full((size, size, 3), value, dtype=np.uint8)
        pixels[i % size, :, 0] = 255 - value  # every image a little different
        Image.fromarray(pixels).convert(mode).save(folder / f"{i}.png")


def test_grey_folder_becomes_one_channel_with_a_held_out_test_split(tmp_path: Path) -> None:
    _write(tmp_path / "cats", 10, 30)
    _write(tmp_path / "dogs", 10, 200)
    source = load_folder(tmp_path, image_size=16)
    assert source.classes == ("cats", "dogs")
    assert source.train.images.shape[1:] == (1, 16, 16)
    assert (len(source.train), len(source.test)) == (16, 4)
    assert source.test.labels.bincount().tolist() == [2, 2]
    assert source.image_preprocessing == "resize"


def test_colour_folder_stays_rgb_and_uses_train_test_subfolders(tmp_path: Path) -> None:
    for split, count in (("train", 6), ("test", 3)):
        _write(tmp_path / split / "red", count, 40, mode="RGB")
        _write(tmp_path / split / "blue", count, 220, mode="RGB")
    source = load_folder(tmp_path, image_size=12, workers=2)
    assert source.classes == ("blue", "red")
    assert source.train.images.shape == (12, 3, 12, 12) and len(source.test) == 6


def test_light_backgrounds_mean_dark_ink(tmp_path: Path) -> None:
    _write(tmp_path / "a", 4, 250)
    _write(tmp_path / "b", 4, 240)
    assert load_folder(tmp_path, image_size=8).ink == "dark"


def test_one_class_is_not_a_classifier(tmp_path: Path) -> None:
    _write(tmp_path / "only", 4, 10)
    with pytest.raises(DataError, match="at least two"):
        load_folder(tmp_path, image_size=8)


def test_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is not a folder"):
        load_folder(tmp_path / "nope", image_size=8)


def test_unreadable_image_is_named(tmp_path: Path) -> None:
    _write(tmp_path / "a", 2, 10)
    _write(tmp_path / "b", 2, 90)
    (tmp_path / "b" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"broken\.png"):
        load_folder(tmp_path, image_size=8)
