"""How an artifact's "not a digit" threshold treats each kind of generated non-digit, on a large fresh draw.

    python scripts/flag_kinds.py models/mnist-cnn/3                       # 40,000 images, seed 99
    python scripts/flag_kinds.py models/mnist-cnn/3 --count 10000 --seed 7 --lowest /tmp/lowest.png

The export measures the threshold on 2,500 generated images (``training/trust.py``); a rarer failure needs a
larger draw. This scores ``--count`` images of ``training/nondigits.py`` with the artifact's TorchScript
file at its manifest's temperature, as the service scores an answer, and prints per kind how many reach the
threshold and the lowest score; ``--lowest`` draws the lowest-scoring images, 4x enlarged. Run it from the
repository root with the project installed (`make setup`), or with PYTHONPATH=. .
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from service.contract.manifest import read_manifest, verify_checksum
from training import nondigits
from training.export import load_scripted
from training.trust import Scorer, outlier_scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("artifact", type=Path, help="a model version folder, e.g. models/mnist-cnn/3")
    parser.add_argument("--count", type=int, default=40_000, help="images to generate (default: 40000)")
    parser.add_argument("--seed", type=int, default=99, help="the draw (default: 99; the export uses 2026 "
                        "to measure and 4711 to choose)")
    parser.add_argument("--lowest", type=Path, help="a PNG of the 24 lowest-scoring must-flag images")
    args = parser.parse_args()
    manifest = read_manifest(args.artifact)
    if manifest.outliers is None:
        parser.error(f"{args.artifact}: its manifest has no \"not a digit\" threshold")
    threshold, temperature = manifest.outliers.threshold, manifest.calibration.temperature
    model = load_scripted(verify_checksum(manifest, args.artifact))
    images, kinds = nondigits.generate(args.count, args.seed)
    scores = outlier_scores(Scorer(model, torch.device("cpu"), torch.contiguous_format)(images), temperature)
    print(f"{args.artifact}: threshold {threshold:.4f}, temperature {temperature:g}, {args.count} images, "
          f"seed {args.seed}")
    print(f"{'kind':<10} {'images':>7} {'flagged':>9} {'missed':>7} {'lowest':>7}  must be flagged")
    for k, kind in enumerate(nondigits.KINDS):
        chosen = scores[kinds == k]
        if not len(chosen):
            continue
        missed = int((chosen < threshold).sum())
        print(f"{kind:<10} {len(chosen):>7} {100 * (1 - missed / len(chosen)):>8.2f}% {missed:>7} "
              f"{chosen.min().item():>7.4f}  {'yes' if kind in nondigits.MUST_FLAG else 'no'}")
    if args.lowest:
        must = nondigits.must_flag(kinds) | (kinds == nondigits.KINDS.index("blotches"))
        order = torch.nonzero(must).flatten()[scores[must].argsort()[:24]]
        tiles = [np.kron(images[i, 0].numpy(), np.ones((4, 4), np.uint8)) for i in order.tolist()]
        tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % 8)
        rows = [np.concatenate(tiles[r:r + 8], axis=1) for r in range(0, len(tiles), 8)]
        Image.fromarray(np.concatenate(rows, axis=0)).save(args.lowest)
        print(f"the {len(order)} lowest-scoring noise, blotch, blank and solid images: {args.lowest}")


if __name__ == "__main__":
    main()
