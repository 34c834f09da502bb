"""Other-style digits: digits rendered from installed fonts, in other strokes, sizes, slants and positions,
then prepared exactly as the service prepares an upload, to measure a digit model off MNIST's own hands.

The fonts come from Debian packages (``RENDER_PACKAGES``): printed faces and handwriting ones. Nothing here
is trained on; the export reports the model's accuracy and calibration on these beside the test split's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from service.contract.manifest import InputSpec
from training.datasets import DataError, ImageSet

FONT_ROOT = Path("/usr/share/fonts")
# Debian package -> font files it installs (under FONT_ROOT) that have all ten digits.
FONTS = {
    "fonts-dejavu-core": ("truetype/dejavu/DejaVuSans.ttf", "truetype/dejavu/DejaVuSans-Bold.ttf",
                          "truetype/dejavu/DejaVuSerif.ttf", "truetype/dejavu/DejaVuSansMono.ttf"),
    "fonts-liberation": ("truetype/liberation/LiberationSans-Regular.ttf",
                         "truetype/liberation/LiberationSerif-Italic.ttf",
                         "truetype/liberation/LiberationMono-Regular.ttf",
                         "truetype/liberation/LiberationSansNarrow-Bold.ttf"),
    "fonts-freefont-ttf": ("truetype/freefont/FreeSans.ttf", "truetype/freefont/FreeSerifBold.ttf",
                           "truetype/freefont/FreeMonoOblique.ttf"),
    "fonts-comic-neue": ("opentype/comic-neue/ComicNeue-Regular.otf",
                         "opentype/comic-neue/ComicNeue-Light.otf",
                         "opentype/comic-neue/ComicNeue-BoldItalic.otf"),
    "fonts-humor-sans": ("truetype/humor-sans/Humor-Sans.ttf",),
    "fonts-dkg-handwriting": ("truetype/fifthhorseman/dkg.ttf", "truetype/fifthhorseman/dkgIt.ttf"),
    "fonts-breip": ("truetype/breip/Breip.ttf",),
    "fonts-bwht": ("opentype/bwht/BecauseWeBuild-Regular.otf", "opentype/bwht/BecauseWeMentor-Regular.otf"),
}
RENDER_PACKAGES = tuple(FONTS)
TEST_SEED, VAL_SEED = 7, 8  # the measured set and a separate one (other draws of the same fonts)
_CANVAS = 128
_SIZES = (36, 52, 68, 88)  # point sizes, on a canvas of _CANVAS pixels


def font_files(root: Path = FONT_ROOT) -> list[Path]:
    """The listed fonts that are installed; DataError naming the packages when none is."""
    found = [root / name for files in FONTS.values() for name in files if (root / name).is_file()]
    if not found:
        raise DataError("no font to render other-style digits with was found under "
                        f"{root}: apt-get install {' '.join(RENDER_PACKAGES)}")
    return found


def render_digits(per_font: int, seed: int, fonts: list[Path] | None = None) -> ImageSet:
    """``per_font`` renderings of each digit in each font, prepared as uploads: uint8 ``[N, 1, 28, 28]``."""
    from service.contract.images import to_input  # exactly what the service does to an uploaded image

    spec = InputSpec(shape=(1, 28, 28))
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for path in fonts or font_files():
        faces = [ImageFont.truetype(str(path), size) for size in _SIZES]
        for digit in range(10):
            for _ in range(per_font):
                images.append(to_input(_draw(str(digit), faces[int(rng.integers(len(faces)))], rng), spec))
                labels.append(digit)
    return ImageSet(torch.from_numpy(np.stack(images)), torch.tensor(labels, dtype=torch.int64))


def _draw(text: str, font: ImageFont.FreeTypeFont, rng: np.random.Generator) -> np.ndarray:
    """One digit on paper or a screen: a random size, stroke, slant, position, ground and ink."""
    size = int(font.size)
    stroke = int(rng.integers(0, 1 + size // 14))  # thicker strokes than the face's own, sometimes
    glyph = Image.new("L", (size * 2, size * 2), 0)
    ImageDraw.Draw(glyph).text((size // 3, size // 4), text, font=font, fill=255, stroke_width=stroke,
                               stroke_fill=255)
    glyph = glyph.rotate(float(rng.uniform(-12, 12)), resample=Image.Resampling.BICUBIC)
    box = glyph.getbbox()
    if box is None:
        raise DataError(f"{font.path!s} draws nothing for {text!r}: remove it from training/rendered.py")
    glyph = glyph.crop(box)
    canvas = Image.new("L", (_CANVAS, _CANVAS), 0)
    left = int(rng.integers(0, max(1, _CANVAS - glyph.width)))
    top = int(rng.integers(0, max(1, _CANVAS - glyph.height)))
    canvas.paste(glyph, (left, top))
    coverage = np.asarray(canvas, dtype=np.float32) / 255.0
    ground, ink = (rng.uniform(200, 255), rng.uniform(0, 90)) if rng.random() < 0.7 \
        else (rng.uniform(0, 50), rng.uniform(170, 255))  # pen on paper, or chalk on a dark screen
    pixels = ground + (ink - ground) * coverage + rng.normal(0, rng.uniform(0, 8), coverage.shape)
    return np.clip(pixels, 0, 255).astype(np.uint8)
