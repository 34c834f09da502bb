"""Write samples/: real MNIST test digits as PNG and JPEG, a digit drawn dark on white, and the same digit
drawn reversed (the shipped model gets it wrong: the README's correction example).

    python scripts/make_samples.py --data-dir ../shared/datasets     # rewrites samples/*.png, *.jpg

The README's examples post these files; tests/service/test_samples.py checks the shipped model reads them.
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps

# MNIST test-set positions of the digits written out, and the format of each.
PICKS = {0: "png", 1: "png", 2: "jpg", 3: "jpg", 4: "png"}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file of unsigned bytes (gzip-compressed) as an array of its declared shape."""
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def drawn_three(size: int = 240) -> Image.Image:
    """A 3 in thick dark strokes on a white ground, the way a person draws one on paper or a screen."""
    image = Image.new("L", (size, size), 255)
    pen = ImageDraw.Draw(image)
    width = size // 12
    pen.arc((60, 20, 180, 120), start=200, end=90, fill=20, width=width)
    pen.arc((55, 110, 185, 220), start=270, end=160, fill=20, width=width)
    return image


def main() -> None:
    """Write every sample into ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/datasets"),
                        help="folder holding mnist/t10k-*.gz (default: ../shared/datasets)")
    parser.add_argument("--out", type=Path, default=Path("samples"), help="where to write (default: samples)")
    args = parser.parse_args()
    images = read_idx(args.data_dir / "mnist" / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(args.data_dir / "mnist" / "t10k-labels-idx1-ubyte.gz")
    args.out.mkdir(parents=True, exist_ok=True)
    for index, kind in PICKS.items():
        path = args.out / f"mnist-{labels[index]}.{kind}"
        Image.fromarray(images[index]).save(path, **({"quality": 95} if kind == "jpg" else {}))
        print(path)
    drawn = args.out / "drawn-3.png"
    drawn_three().save(drawn)
    print(drawn)
    reversed_three = args.out / "reversed-3.png"  # a 3 as children often write it, mirrored
    ImageOps.mirror(drawn_three()).save(reversed_three)
    print(reversed_three)


if __name__ == "__main__":
    main()
