"""``--dataset folder:PATH``: any tree of class sub-folders of images, so users can train their own model.

``PATH/<class>/*.png`` (a test split is held out, 20 % of each class), or ``PATH/train/<class>/...`` with
``PATH/test/<class>/...`` beside it. Images are decoded once, resized to a square, and kept in memory as one
uint8 tensor; grey-scale sets stay one channel, anything in colour becomes RGB.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from training.datasets import TEST_FRACTION, DataError, ImageSet, Source, holdout

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def load_folder(root: Path, image_size: int, workers: int = 0) -> Source:
    """Read a folder dataset; raise DataError with what is wrong when it does not look like one."""
    if not root.is_dir():
        raise DataError(f"{root} is not a folder. --dataset folder:PATH needs a folder with one sub-folder "
                        f"of images per class (PATH/<class>/*.png), optionally split as PATH/train and "
                        f"PATH/test.")
    split = (root / "train").is_dir() and (root / "test").is_dir()
    train_root = root / "train" if split else root
    classes = class_names(train_root)
    train = _read_tree(train_root, classes, image_size, workers)
    if split:
        test = _read_tree(root / "test", classes, image_size, workers)
    else:
        train, test = holdout(train, TEST_FRACTION)
    train, test = _same_channels(train, test)
    ink = "dark" if train.images.float().mean() > 127.5 else "light"  # mostly light ground: dark ink
    return Source(name=f"folder:{root.name}", location=str(root), classes=classes, train=train, test=test,
                  ink=ink, image_preprocessing="resize")


def class_names(root: Path) -> tuple[str, ...]:
    """The class sub-folders of ``root`` that hold at least one image, sorted; at least two of them."""
    classes = tuple(sorted(d.name for d in root.iterdir() if d.is_dir() and _images_in(d)))
    if len(classes) < 2:
        raise DataError(f"{root} holds {len(classes)} class folder(s) with images; a classifier needs at "
                        f"least two: {root}/<class>/*.png (suffixes {', '.join(sorted(IMAGE_SUFFIXES))}).")
    return classes


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _read_tree(root: Path, classes: tuple[str, ...], size: int, workers: int) -> ImageSet:
    files = [(path, label) for label, name in enumerate(classes) for path in _images_in(root / name)]
    if not files:
        raise DataError(f"{root} holds no images in the class folders {', '.join(classes)}.")
    # Decoding is the slow part and Pillow releases the GIL while it decodes: threads are enough.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        arrays = list(pool.map(lambda item: _decode(item[0], size), files))
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    return ImageSet(images, labels)


def _decode(path: Path, size: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"{path} is not a readable image ({exc}); remove it or replace it.") from None


def _same_channels(train: ImageSet, test: ImageSet) -> tuple[ImageSet, ImageSet]:
    """Grey-scale sets (every pixel has R == G == B) become one channel; colour sets stay RGB."""
    grey = all(bool((s.images[:, 0] == s.images[:, 1]).all() and (s.images[:, 1] == s.images[:, 2]).all())
               for s in (train, test))
    if not grey:
        return train, test
    return (ImageSet(train.images[:, :1].contiguous(), train.labels),
            ImageSet(test.images[:, :1].contiguous(), test.labels))
