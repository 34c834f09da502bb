"""Fixtures shared by the whole suite: the repository, the MNIST files, and a real MNIST slice."""

from __future__ import annotations

import gzip
import os
import tempfile
from pathlib import Path

import pytest

# The service's processes count in prometheus_client's multiprocess mode, which it picks when first
# imported; the tests run in it too, as the HTTP workers do, so that a scrape sees the runtime's batches.
os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="trainserve-test-metrics-")

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The checkout's root: the working directory for subprocesses (``python -m training``)."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    """The folder holding ``mnist/*.gz``: $TRAINSERVE_DATA_DIR, else ../shared/datasets by the checkout."""
    folder = Path(os.environ.get("TRAINSERVE_DATA_DIR") or REPO_ROOT.parent / "shared" / "datasets")
    if not (folder / "mnist" / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"MNIST is not in {folder}/mnist/ (set TRAINSERVE_DATA_DIR to the folder holding mnist/)")
    return folder


@pytest.fixture(scope="session")
def mnist_slice(datasets_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir whose ``mnist/`` holds the first 1,000 training and 300 test images of the real MNIST."""
    root = tmp_path_factory.mktemp("mnist-slice")
    (root / "mnist").mkdir()
    for split, count in (("train", 1000), ("t10k", 300)):
        for kind, header_len in (("images-idx3", 16), ("labels-idx1", 8)):
            name = f"{split}-{kind}-ubyte.gz"
            raw = gzip.decompress((datasets_dir / "mnist" / name).read_bytes())
            header = bytearray(raw[:header_len])
            header[4:8] = count.to_bytes(4, "big")  # the item count, first dimension of the IDX header
            item = 28 * 28 if kind.startswith("images") else 1
            body = raw[header_len: header_len + count * item]
            (root / "mnist" / name).write_bytes(gzip.compress(bytes(header) + body, compresslevel=1))
    return root


@pytest.fixture(scope="session")
def formats_root(tmp_path_factory: pytest.TempPathFactory, datasets_dir: Path) -> Path:
    """models/ with mnist-formats/1 exported in every format: the suite's one AOTInductor compile.

    A seeded, untrained compact CNN (the formats are judged against each other and the eager model, not on
    accuracy) probed with real MNIST test digits.
    """
    import torch

    from training.datasets import read_idx
    from training.export import ArtifactInfo, PixelClassifier, export
    from training.nets import build_net

    torch.manual_seed(0)
    model = PixelClassifier(build_net("cnn", (1, 28, 28), 10), (0.1307,), (0.3081,)).eval()
    digits = read_idx(datasets_dir / "mnist" / "t10k-images-idx3-ubyte.gz")[:16].unsqueeze(1)
    info = ArtifactInfo(name="mnist-formats", architecture="cnn", labels=tuple(str(d) for d in range(10)),
                        input_shape=(1, 28, 28), metrics={"test_accuracy": 0.1}, training={},
                        dataset={"name": "mnist", "source": "tests"}, version="1")
    root = tmp_path_factory.mktemp("formats-models")
    export(model, info, root, digits, formats=("exported", "aoti"))
    return root
