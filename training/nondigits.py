"""Generated images that are not digits: the blanks, solid colours, noise, scribbles and blobs that reach a
digit classifier in practice, for outlier exposure in training and for measuring the "not a digit" score.

Each kind comes in the two forms the model meets: as a raw 28x28 tensor (what a client of ``:predict`` or
OIP may send) and after the service's upload preparation (crop to the ink, fit into 20x20, centre by mass:
``service/contract/images.py``), which turns a dot into a filled disc and any solid colour into a blank field.

A noise draw is pixel noise (uniform, gaussian, salt and pepper) or, one time in four, a smooth blotchy
field; the blotches are labelled a kind of their own. Prepared like an upload, a blotchy field is cropped to
its brightest parts and stretched, and some come out as stroke-like shapes a person could read as a digit
(docs/benchmarks.md shows them), so "every noise image flagged" is a promise about pixel noise only.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image, ImageDraw

# What generate() draws in turn; a "noise" draw comes out as "noise" or "blotches".
DRAWN = ("blank", "solid", "noise", "scribble", "blob")
# The kinds generate() labels its images with.
KINDS = (*DRAWN, "blotches")
# Kinds every one of which the service must flag (the targets of issue 26): nothing in them is a digit.
MUST_FLAG = ("blank", "solid", "noise")
_CANVAS = 64  # scribbles and blobs are drawn this size, then prepared like an upload


def generate(count: int, seed: int, drawn: tuple[str, ...] = DRAWN) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` non-digit images as uint8 ``[N, 1, 28, 28]``, drawing the kinds of ``drawn`` in turn, and the
    index of each one's kind in ``KINDS``; the same images for the same seed."""
    rng = np.random.default_rng(seed)
    made = [_MAKERS[drawn[k % len(drawn)]](rng) for k in range(count)]
    images = np.stack([image for image, _ in made])
    kinds = torch.tensor([KINDS.index(kind) for _, kind in made], dtype=torch.int64)
    return torch.from_numpy(images).unsqueeze(1), kinds


def must_flag(kinds: torch.Tensor) -> torch.Tensor:
    """Which of ``kinds`` (indices into ``KINDS``) are of a kind in ``MUST_FLAG``."""
    return torch.isin(kinds, torch.tensor([KINDS.index(kind) for kind in MUST_FLAG]))


def _prepared(pixels: np.ndarray) -> np.ndarray:
    from service.contract.images import mnist_style  # the service's own preparation of an upload

    return mnist_style(pixels)


def _maybe_prepared(rng: np.random.Generator, raw28: Callable[[], np.ndarray],
                    canvas: Callable[[], np.ndarray]) -> np.ndarray:
    return raw28() if rng.random() < 0.5 else _prepared(canvas())


def _blank(rng: np.random.Generator) -> tuple[np.ndarray, str]:
    # Black, or a faint uniform ground (a scanner's or a camera's "nothing").
    level = 0 if rng.random() < 0.5 else int(rng.integers(0, 24))
    return np.full((28, 28), level, np.uint8), "blank"


def _solid(rng: np.random.Generator) -> tuple[np.ndarray, str]:
    return np.full((28, 28), int(rng.integers(0, 256)), np.uint8), "solid"


def _noise(rng: np.random.Generator) -> tuple[np.ndarray, str]:
    kind = "noise"

    def field(size: int) -> np.ndarray:
        nonlocal kind
        style = rng.integers(0, 4)
        if style == 0:  # uniform
            return rng.integers(0, 256, (size, size)).astype(np.uint8)
        if style == 1:  # gaussian around a grey level
            return np.clip(rng.normal(rng.uniform(40, 215), rng.uniform(10, 90), (size, size)), 0, 255) \
                .astype(np.uint8)
        if style == 2:  # salt and pepper on black
            return ((rng.random((size, size)) < rng.uniform(0.02, 0.5)) * 255).astype(np.uint8)
        kind = "blotches"
        coarse = rng.integers(0, 256, (int(rng.integers(3, 9)),) * 2).astype(np.uint8)
        return np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC))

    image = _maybe_prepared(rng, lambda: field(28), lambda: field(_CANVAS))  # sets kind
    return image, kind


def _scribble(rng: np.random.Generator) -> tuple[np.ndarray, str]:
    # Several random strokes crossing each other: a tangle no digit is drawn as (a single stroke can be a 1).
    image = Image.new("L", (_CANVAS, _CANVAS), 0)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(4, 10))):
        points = [tuple(p) for p in rng.uniform(2, _CANVAS - 2, (int(rng.integers(2, 6)), 2)).tolist()]
        draw.line(points, fill=int(rng.integers(160, 256)), width=int(rng.integers(1, 7)), joint="curve")
    return _prepared(np.asarray(image)), "scribble"


def _blob(rng: np.random.Generator) -> tuple[np.ndarray, str]:
    # Dots and filled shapes: after preparation a lone dot fills the 20x20 box as a disc.
    image = Image.new("L", (_CANVAS, _CANVAS), 0)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 4))):
        x, y = rng.uniform(4, _CANVAS - 4, 2)
        # Never much longer than wide: a thin bar prepared for the model is a 1.
        rx = rng.uniform(1, 18)
        ry = rx * rng.uniform(0.65, 1.5)
        box = [x - rx, y - ry, x + rx, y + ry]
        (draw.ellipse if rng.random() < 0.7 else draw.rectangle)(box, fill=int(rng.integers(128, 256)))
    return _prepared(np.asarray(image)), "blob"


_MAKERS: dict[str, Callable[[np.random.Generator], tuple[np.ndarray, str]]] = {
    "blank": _blank, "solid": _solid, "noise": _noise, "scribble": _scribble, "blob": _blob}
