"""Add the exported and AOTInductor formats to existing artifacts, and measure every format's test accuracy.

    python scripts/add_formats.py models/mnist-cnn/1 --data-dir ../shared/datasets
    python scripts/add_formats.py models/mnist-cnn/1 --formats exported      # no C++ compiler needed

For artifacts exported before ``python -m training`` wrote these formats itself (training/reexport.py says
how). The test set is the one the manifest names, read from --data-dir; the accuracies go into the
manifest's ``extra.format_test_accuracy`` and are printed. Run from the repository root with PYTHONPATH=. .
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from service.contract.manifest import read_manifest
from training.config import EXTRA_FORMATS
from training.data import read_source


def main() -> None:
    """Parse flags, re-export each artifact, print each format's test accuracy."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("artifacts", type=Path, nargs="+", help="artifact folders, e.g. models/mnist-cnn/1")
    p.add_argument("--formats", nargs="+", choices=EXTRA_FORMATS, default=list(EXTRA_FORMATS),
                   help="(default: exported aoti)")
    p.add_argument("--data-dir", type=Path, default=Path("data"),
                   help="folder holding the manifest's dataset, e.g. mnist/ (default: data)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from training.reexport import add_formats  # torch loads only once the flags are good

    for folder in args.artifacts:
        manifest = read_manifest(folder)
        source = read_source(str(manifest.training.get("dataset", manifest.dataset["name"])), args.data_dir,
                             download=False, image_size=manifest.input.shape[-1], workers=0)
        accuracy = add_formats(folder, args.formats, source.test.images[:64], source.test)
        recorded = manifest.metrics.get("test_accuracy")
        for fmt, value in accuracy.items():
            print(f"{manifest.name}/{manifest.version}  {fmt:<12} test accuracy {100 * value:.2f} % "
                  f"on {len(source.test):,} images (manifest: {100 * recorded:.2f} %)")


if __name__ == "__main__":
    main()
