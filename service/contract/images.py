"""Decoded images to model inputs, as the manifest's input spec says: match the ink, and prepare them as the
MNIST set was made. The service does this to every upload; training does it to the images it renders, so
that a model learns from exactly what it will be sent.

MNIST digits are light strokes on a black ground, cropped to the ink, scaled to fit a 20x20 box keeping
their aspect ratio, and placed in a 28x28 field with their centre of mass in the middle. A photo or a
drawing only classifies well once it looks like that; these pure functions do it.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from service.contract.manifest import InputSpec

# Pixels brighter than this fraction of the ground-to-ink range count as ink when cropping, so that paper
# texture and JPEG noise do not widen the box.
INK_THRESHOLD = 0.25
FIT_BOX = 20


def to_input(pixels: np.ndarray, spec: InputSpec) -> np.ndarray:
    """A decoded image as one uint8 example [C, H, W] for a model with this input spec."""
    channels, height, width = spec.shape
    if channels == 1:
        ground = _ground(pixels)
        if (ground > 127) == (spec.ink == "light"):  # the ground is the wrong way round for the model
            pixels, ground = 255 - pixels, 255 - ground
        if spec.image_preprocessing == "mnist":
            return mnist_style(pixels, (height, width), ground=ground)[None]
        return _resize(pixels, (height, width))[None]
    return _resize(pixels, (height, width)).transpose(2, 0, 1).copy()


def mnist_style(grey: np.ndarray, size: tuple[int, int] = (28, 28), box: int = FIT_BOX,
                ground: int | None = None) -> np.ndarray:
    """Light-on-dark grey image -> crop to the ink, fit into box x box, centre by mass in ``size``.

    ``ground`` is the background level when the caller knows it already (the median of the border).
    Written for small images as much as large ones: a 28x28 digit costs a few dozen microseconds, so the
    steps are few whole-array numpy calls, with Python ints in between.
    """
    out = np.zeros(size, dtype=np.uint8)
    # Each row's and column's brightest pixel (one pass over a large photo), as Python ints: the few
    # decisions below cost less in Python than in numpy calls.
    row_peak, col_peak = grey.max(axis=1).tolist(), grey.max(axis=0).tolist()
    ground, peak = _ground(grey) if ground is None else ground, max(row_peak)
    if peak - ground < 1:
        return out  # no ink at all: a blank field, as the model would see an empty MNIST cell
    # Crop to the rows and columns whose brightest pixel is ink, then stretch the ground-to-ink range of
    # the small crop to 0..255.
    threshold = ground + INK_THRESHOLD * (peak - ground)
    rows = [i for i, level in enumerate(row_peak) if level > threshold]
    cols = [i for i, level in enumerate(col_peak) if level > threshold]
    crop = grey[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    if ground or peak != 255:  # a lookup table: the same values, no float copy of a large crop
        crop = _stretch(ground, peak)[crop]
    scale = box / max(crop.shape)
    fit = (max(1, round(crop.shape[0] * scale)), max(1, round(crop.shape[1] * scale)))
    patch = _resize(crop, fit)
    rows_mass = patch.sum(axis=1, dtype=np.int64).tolist()
    mass = sum(rows_mass)
    if mass <= 0:
        return out
    # Centre of mass over at most box (20) rows and columns: Python sums beat numpy calls at this size.
    cy = sum(i * m for i, m in enumerate(rows_mass)) / mass
    cx = sum(i * m for i, m in enumerate(patch.sum(axis=0, dtype=np.int64).tolist())) / mass
    top = min(max(round(size[0] / 2 - cy), 0), size[0] - fit[0])
    left = min(max(round(size[1] / 2 - cx), 0), size[1] - fit[1])
    out[top:top + fit[0], left:left + fit[1]] = patch
    return out


@functools.lru_cache(maxsize=4096)
def _stretch(ground: int, peak: int) -> np.ndarray:
    """The lookup table that maps ``ground``..``peak`` onto 0..255 (at most 256 x 256 of them)."""
    levels = np.arange(256, dtype=np.float32)
    gain = np.float32(255 / (peak - ground))
    return ((np.maximum(levels, ground) - ground) * gain).round().clip(0, 255).astype(np.uint8)


def _ground(grey: np.ndarray) -> int:
    # The background level: the median of the border pixels (a digit rarely touches the border).
    border = np.concatenate((grey[0], grey[-1], grey[1:-1, 0], grey[1:-1, -1]))
    return int(np.partition(border, len(border) // 2)[len(border) // 2])


def _resize(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if pixels.shape[:2] == size:
        return pixels
    image = Image.fromarray(pixels)
    return np.asarray(image.resize((size[1], size[0]), Image.Resampling.LANCZOS, reducing_gap=3.0))
