"""``--extra-data DIR``: train on the corrections the service stored, and judge the run on some of them.

The service writes each correction as ``<feedback dir>/<model>/<true label>/<hash>.png``, the input exactly
as the model received it (a table model's as a row of ``<model>/corrections.csv``: its feature columns,
``label`` and ``hash``), and records it in ``<model>/corrections.jsonl`` (service/web/corrections.py). A
run reads that folder (``DIR`` itself, or ``DIR/<name>`` when it is there) and splits it by content hash: a
correction whose hash falls in the first ``holdout`` share of the hash space is held out, the same one every
time, however many corrections come later. The rest join the training split, repeated so that together
they are at least ``share`` of each epoch (1 % by default: one correction is seen about 570 times among
MNIST's 57,000 training images, fifteen about 38 times each, a thousand once; each copy is augmented
differently), so that a handful of corrections weighs against tens of thousands of training images without
drowning them. The held-out ones judge the run beside the untouched test split: the
publishing rule (training/publish.py) compares the run with the version served by default on both.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from service.contract.feedback import LOG_FILE, ROWS_FOLDER, TABLE_FILE
from training.datasets import DataError, ImageSet

log = logging.getLogger(__name__)

_HASH_SPACE = 16 ** 8  # a correction's place in the hash space: the first 8 hex digits of its name
_Item = tuple[str, np.ndarray, int]  # a correction: its hash, its input, its label's index


@dataclass(frozen=True)
class Corrections:
    """The corrections of one model, split into those trained on and those held out to judge the run."""

    folder: Path
    trained: ImageSet
    held_out: ImageSet
    trained_hashes: tuple[str, ...]
    held_out_hashes: tuple[str, ...]
    weight: int  # copies of each trained-on correction per epoch
    versions: dict[str, int] = field(default_factory=dict)  # model version corrected -> corrections

    def identity(self) -> dict[str, Any]:
        """The manifest's ``dataset.corrections``: which corrections the run saw, and how."""
        return {"folder": str(self.folder), "weight": self.weight, "trained": list(self.trained_hashes),
                "held_out": list(self.held_out_hashes), "corrected_versions": self.versions}


def feedback_folder(root: Path, name: str) -> Path:
    """The folder of ``name``'s corrections: ``root/name`` in the service's layout, else ``root``."""
    return root / name if (root / name).is_dir() else root


def load_corrections(root: Path, name: str, classes: tuple[str, ...], input_shape: tuple[int, ...],
                     holdout: float, share: float, train_size: int,
                     features: tuple[str, ...] = ()) -> Corrections:
    """Read the corrections under ``root`` for model ``name`` (images, or a table model's rows when
    ``features`` names its columns), weighted against a training split of ``train_size`` examples (see the
    module docstring)."""
    folder = feedback_folder(root, name)
    layout = f"{name}/{TABLE_FILE}" if features else f"{name}/<label>/<hash>.png"
    if not folder.is_dir():
        raise DataError(f"--extra-data {root}: no such folder (the service's TRAINSERVE_FEEDBACK_DIR, "
                        f"holding {layout})")
    found = (_rows(folder / TABLE_FILE, classes, features) if features
             else _images(folder, classes, input_shape))
    if not found:
        raise DataError(f"--extra-data {folder}: no corrections ({layout}) for {name}")
    found.sort(key=lambda item: item[0])
    hashes = np.array([digest for digest, _, _ in found])
    held = np.array([_place(digest) < holdout for digest in hashes])
    if holdout > 0 and not held.any() and len(found) > 1:
        held[0] = True  # the lowest hash: the run is judged on at least one correction it did not see
    data = ImageSet(torch.from_numpy(np.stack([values for _, values, _ in found])),
                    torch.tensor([label for _, _, label in found], dtype=torch.int64))
    mask = torch.from_numpy(held)
    if held.all():
        raise DataError(f"--extra-data {folder}: all {len(found)} correction(s) are held out; lower "
                        f"--extra-holdout (now {holdout:g}) or store more")
    trained = data.subset(torch.nonzero(~mask).flatten())
    weight = max(1, math.ceil(share * train_size / len(trained)))
    log.info("corrections from %s: %d trained on (each %d times per epoch), %d held out", folder,
             len(trained), weight, int(held.sum()))
    return Corrections(folder=folder, trained=trained, held_out=data.subset(torch.nonzero(mask).flatten()),
                       trained_hashes=tuple(hashes[~held]), held_out_hashes=tuple(hashes[held]),
                       weight=weight, versions=_versions(folder))


def _images(folder: Path, classes: tuple[str, ...], input_shape: tuple[int, ...]) -> list[_Item]:
    unknown = sorted(p.name for p in folder.iterdir()
                     if p.is_dir() and p.name not in classes and p.name != ROWS_FOLDER)
    if unknown:
        raise DataError(f"--extra-data {folder}: folders {', '.join(unknown)} are not labels of this dataset "
                        f"({', '.join(classes)})")
    return [(path.stem, _read(path, input_shape), classes.index(label))
            for label in classes for path in (folder / label).glob("*.png")]


def _rows(path: Path, classes: tuple[str, ...], features: tuple[str, ...]) -> list[_Item]:
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in (*features, "label", "hash") if c not in (reader.fieldnames or ())]
        if missing:
            raise DataError(f"{path}: columns {missing} missing (the model's features are {list(features)})")
        items = []
        for line, row in enumerate(reader, start=2):
            if row["label"] not in classes:
                raise DataError(f"{path}, line {line}: label {row['label']!r} is not one of {list(classes)}")
            try:
                values = np.array([float(row[f]) for f in features], np.float32)
            except ValueError:
                raise DataError(f"{path}, line {line}: a feature value is not a number") from None
            items.append((row["hash"], values, classes.index(row["label"])))
    return items


def with_corrections(train: ImageSet, corrections: Corrections) -> ImageSet:
    """The training split with each trained-on correction appended ``corrections.weight`` times."""
    extra = corrections.trained
    copies = (corrections.weight, *([1] * (extra.images.dim() - 1)))
    return ImageSet(torch.cat([train.images, extra.images.repeat(*copies)]),
                    torch.cat([train.labels, extra.labels.repeat(corrections.weight)]))


def _place(stem: str) -> float:
    try:
        return int(stem[:8], 16) / _HASH_SPACE
    except ValueError:  # a file not named by its hash: placed by a hash of its name
        return int(hashlib.sha256(stem.encode()).hexdigest()[:8], 16) / _HASH_SPACE


def _read(path: Path, input_shape: tuple[int, ...]) -> np.ndarray:
    channels = input_shape[0]
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    pixels = pixels[None] if pixels.ndim == 2 else np.moveaxis(pixels, -1, 0)
    if pixels.shape != tuple(input_shape):
        raise DataError(f"{path}: a {list(pixels.shape)} image, this model takes {list(input_shape)} (a "
                        "correction is stored as the model received it: was it stored for another model?)")
    return pixels


def _versions(folder: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    log_file = folder / LOG_FILE
    if log_file.is_file():
        for line in log_file.read_text().splitlines():
            try:
                version = str(json.loads(line)["version"])
            except (ValueError, KeyError, TypeError):
                continue
            counts[version] = counts.get(version, 0) + 1
    return counts
