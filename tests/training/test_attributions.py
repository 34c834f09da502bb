"""Class-average attributions (training/attributions.py) of the shipped MNIST model over real test digits:
each class's map pushes towards the class where its digits have ink, and a model whose weights are
randomised gives different maps (Adebayo et al.'s model-randomisation check)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from training.attributions import class_average, plot_class_attributions
from training.data import ImageSet
from training.datasets import read_idx
from training.export import load_scripted

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "mnist-cnn" / "2" / "model.pt"
CLASSES = tuple(str(d) for d in range(10))


def _test_digits(datasets_dir: Path, count: int = 400) -> ImageSet:
    images = np.asarray(read_idx(datasets_dir / "mnist" / "t10k-images-idx3-ubyte.gz"))[:count]
    labels = np.asarray(read_idx(datasets_dir / "mnist" / "t10k-labels-idx1-ubyte.gz"))[:count]
    return ImageSet(torch.from_numpy(images[:, None].copy()), torch.from_numpy(labels.astype(np.int64)))


def test_each_class_is_pushed_towards_where_its_digits_have_ink(datasets_dir, tmp_path):
    model, digits = load_scripted(SHIPPED), _test_digits(datasets_dir)
    with torch.inference_mode():
        predicted = model(digits.images).argmax(dim=1)
    maps = class_average(model, digits, predicted, CLASSES, torch.device("cpu"), per_class=8, steps=16)
    assert maps.shape == (10, 1, 28, 28) and np.isfinite(maps).all()
    for k in range(10):
        ink = digits.images[digits.labels == k].float().mean(dim=0).numpy() > 64
        towards = np.clip(maps[k], 0, None)
        assert towards[ink].mean() > 2 * towards[~ink].mean(), k
    # The same examples through a net with its weights randomised: the maps no longer look the same.
    torch.manual_seed(0)
    for p in model.parameters():
        p.data = torch.randn_like(p) * p.detach().std()
    scrambled = class_average(model, digits, predicted, CLASSES, torch.device("cpu"), per_class=8, steps=16)
    correlation = np.corrcoef(maps.ravel(), scrambled.ravel())[0, 1]
    assert correlation < 0.5, correlation
    path = plot_class_attributions(maps, CLASSES, tmp_path / "a.png", per_class=8)
    assert path.read_bytes().startswith(b"\x89PNG")


def test_table_models_get_a_bar_per_feature(tmp_path):
    maps = np.array([[0.5, -0.2, 0.1], [-0.3, 0.9, 0.0]], np.float32)
    features = ("radius", "texture", "area")
    path = plot_class_attributions(maps, ("benign", "malignant"), tmp_path / "f.png", features)
    assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 5000
