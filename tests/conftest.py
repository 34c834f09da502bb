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
