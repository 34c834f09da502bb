"""Where the images come from: MNIST-style IDX files, scikit-learn's 8x8 digits, or a folder of images.

Every reader returns a :class:`Source`: whole splits as one uint8 tensor each, decoded once, so training
batches by indexing tensors instead of decoding files per sample.
"""

from __future__ import annotations

import gzip
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

_IDX_IMAGES, _IDX_LABELS = 0x803, 0x801  # IDX magic numbers: uint8 3-d array, uint8 1-d array
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
TEST_FRACTION = 0.2  # held out as the test split where a dataset ships without one
SPLIT_SEED = 0  # fixed, so the held-out examples are the same whatever --seed a run uses


class DataError(RuntimeError):
    """The dataset is missing or unreadable; the message tells the user what to do."""


@dataclass(frozen=True)
class ImageSet:
    """A split in memory: uint8 images ``[N, C, H, W]`` and int64 labels ``[N]``."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> ImageSet:
        """The examples at ``index``, in that order."""
        return ImageSet(self.images[index], self.labels[index])


@dataclass(frozen=True)
class Source:
    """A dataset as read from disk: its train and test splits and what the manifest says about it."""

    name: str
    location: str  # where the files came from
    classes: tuple[str, ...]
    train: ImageSet
    test: ImageSet
    ink: str = "light"  # light strokes on a dark ground (MNIST) or "dark"
    image_preprocessing: str = "resize"  # how the service turns an uploaded image into an input
    features: tuple[str, ...] = ()  # feature-vector sets (CSV, spiral): the names; empty for images


@dataclass(frozen=True)
class IdxDataset:
    """A public dataset shipped as MNIST's four IDX files."""

    name: str
    folders: tuple[str, ...]  # looked for under --data-dir, in this order
    classes: tuple[str, ...]
    torchvision_class: str  # downloads go through torchvision, into <data-dir>/<class>/raw/
    image_preprocessing: str
    system_folders: tuple[str, ...] = ()  # distribution packages (Debian's dataset-fashion-mnist)


IDX_DATASETS = {
    "mnist": IdxDataset("mnist", ("mnist", "MNIST/raw"), tuple("0123456789"), "MNIST", "mnist"),
    "fashion-mnist": IdxDataset(
        "fashion-mnist", ("fashion-mnist", "FashionMNIST/raw"),
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
         "Ankle boot"),
        "FashionMNIST", "resize", ("/usr/share/datasets/fashion-mnist",)),
}


def load_idx_dataset(spec: IdxDataset, data_dir: Path, download: bool) -> Source:
    """Read an IDX dataset from ``data_dir`` (downloading it first if allowed and missing)."""
    folder = find_idx_folder(spec, data_dir)
    if folder is None and download:
        _download(spec, data_dir)
        folder = find_idx_folder(spec, data_dir)
    if folder is None:
        raise DataError(_missing_message(spec, data_dir, download))
    train_x, train_y, test_x, test_y = (read_idx(_idx_path(folder, f)) for f in IDX_FILES)
    return Source(
        name=spec.name, location=str(folder), classes=spec.classes,
        train=_idx_split(train_x, train_y, folder), test=_idx_split(test_x, test_y, folder),
        ink="light", image_preprocessing=spec.image_preprocessing,
    )


def find_idx_folder(spec: IdxDataset, data_dir: Path) -> Path | None:
    """The first folder that holds all four IDX files (gzip-compressed or not), or None."""
    candidates = [data_dir / f for f in spec.folders] + [Path(f) for f in spec.system_folders]
    for folder in candidates:
        if all(_idx_path(folder, f).is_file() for f in IDX_FILES):
            return folder
    return None


def read_idx(path: Path) -> torch.Tensor:
    """Decode one IDX file (optionally gzip-compressed) of unsigned bytes into a uint8 tensor."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path} cannot be read: {exc}. Replace it with a fresh copy.") from None
    magic = int.from_bytes(raw[:4], "big")
    ndim = magic & 0xFF
    if magic not in (_IDX_IMAGES, _IDX_LABELS) or len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path} is not an IDX file of unsigned bytes (magic {magic:#x}).")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path} is truncated: {body.size} bytes for shape {dims}. Replace it.")
    return torch.from_numpy(body.copy()).view(*dims)


def load_digits() -> Source:
    """scikit-learn's bundled 8x8 digits (1,797 images, 16 grey levels), split 80/20."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = torch.from_numpy(np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    train, test = holdout(ImageSet(images, labels), TEST_FRACTION)
    return Source(name="digits", location="sklearn.datasets.load_digits", classes=tuple("0123456789"),
                  train=train, test=test, ink="light", image_preprocessing="resize")


def holdout(data: ImageSet, fraction: float, seed: int = SPLIT_SEED) -> tuple[ImageSet, ImageSet]:
    """Split off ``fraction`` of every class (at least one example each), the same way every time.

    Multi-label targets ``[N, K]`` are stratified by their rows: each distinct label set is a class here.
    """
    generator = torch.Generator().manual_seed(seed)
    groups = data.labels
    if groups.dim() > 1:
        groups = torch.unique(groups, dim=0, return_inverse=True)[1]
    kept, held = [], []
    for label in torch.unique(groups):
        index = torch.nonzero(groups == label).flatten()
        index = index[torch.randperm(len(index), generator=generator)]
        n_held = max(1, round(len(index) * fraction)) if fraction > 0 else 0
        held.append(index[:n_held])
        kept.append(index[n_held:])
    return data.subset(torch.cat(kept).sort().values), data.subset(torch.cat(held).sort().values)


def _idx_path(folder: Path, stem: str) -> Path:
    gz = folder / f"{stem}.gz"
    return gz if gz.is_file() else folder / stem


def _idx_split(images: torch.Tensor, labels: torch.Tensor, folder: Path) -> ImageSet:
    if images.dim() != 3 or labels.dim() != 1 or len(images) != len(labels):
        raise DataError(f"the IDX files in {folder} do not match: images {tuple(images.shape)}, "
                        f"labels {tuple(labels.shape)}.")
    return ImageSet(images.unsqueeze(1).contiguous(), labels.long())


def _download(spec: IdxDataset, data_dir: Path) -> None:
    log.info("%s not found under %s; downloading it with torchvision", spec.name, data_dir)
    try:
        import torchvision.datasets

        getattr(torchvision.datasets, spec.torchvision_class)(root=str(data_dir), train=True, download=True)
    except Exception as exc:  # no network, proxy, mirror down, missing torchvision: all the same to the user
        log.warning("download of %s failed: %s", spec.name, str(exc).splitlines()[0] if str(exc) else exc)


def _missing_message(spec: IdxDataset, data_dir: Path, download: bool) -> str:
    files = ", ".join(f"{f}.gz" for f in IDX_FILES)
    where = data_dir.resolve() / spec.folders[0]
    looked = ", ".join([str(data_dir / f) for f in spec.folders] + list(spec.system_folders))
    tried = "it could not be downloaded (no network?)" if download else "downloading is off (--no-download)"
    return (
        f"The {spec.name} dataset was not found and {tried}. Put its four IDX files, {files} "
        f"(gzip-compressed or not), into the folder {where} or point --data-dir at the folder that holds "
        f"{spec.folders[0]}/. Looked in: {looked}."
    )
