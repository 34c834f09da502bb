"""Uploaded image bytes to pixel arrays: decode PNG, JPEG and what Pillow reads, within the bounds a request
may cost. ``service/contract/images.py`` then prepares the pixels as the model's input spec says.
"""

from __future__ import annotations

import io
import re
import warnings

import numpy as np
import pyspng
import simplejpeg
from PIL import Image, UnidentifiedImageError

from service.errors import InvalidInput, PayloadTooLarge

# Decoding is the cost to bound. Pixels: 40 megapixels is any phone photo. Bytes: what one image may hold in
# decoded arrays at its peak (the decode and the copies preprocessing makes), so that no request raises a
# worker's memory by more than about this plus its body; a JPEG over it is decoded at a reduced scale
# (libjpeg's DCT scaling: the preprocessing needs far fewer pixels), any other format is refused (413).
MAX_PIXELS = 40_000_000
MAX_DECODED_BYTES = 40 * 2**20
# Bytes per pixel the preprocessing adds to a decode at most: an inverted copy, a cropped-and-stretched
# copy and the copy Pillow resizes from.
_PREPARE_BYTES = 3
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


def decode(data: bytes | bytearray, channels: int = 1) -> np.ndarray:
    """Decode PNG/JPEG/... bytes into uint8 [H, W] (grey) or [H, W, 3]; raise InvalidInput if undecodable.

    PNG goes through libspng (pyspng) and JPEG through libjpeg-turbo (simplejpeg), much faster than Pillow
    on small images (docs/benchmarks.md, "Image decoding"); every other format, and any file those two
    decline, goes through Pillow, which also gives the error message for bytes that are no image at all.
    """
    if data[:8] == _PNG_MAGIC and len(data) > 33:
        pixels = _decode_png(data, channels)
    elif data[:3] == _JPEG_MAGIC:
        pixels = _decode_jpeg(data, channels)
    else:
        pixels = None
    return _decode_pillow(data, channels) if pixels is None else pixels


def _decode_png(data: bytes | bytearray, channels: int) -> np.ndarray | None:
    # IHDR is always the first chunk: width, height, bit depth and colour type at fixed offsets.
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    depth, colour = data[24], data[25]
    _check_pixels(width, height)  # whichever decoder reads it, the same limit and the same answer
    if b"tRNS" in data:
        return None  # a transparent colour (pyspng does not apply it); a false match only costs speed
    alpha = colour in (4, 6)
    grey = channels == 1 and colour == 0 and depth <= 8
    decoded = 1 if grey else 4 if alpha else 3
    _check_size(width, height, decoded + (0 if grey or (channels == 3 and not alpha) else channels))
    try:
        pixels = pyspng.load(data, "L" if grey else "RGBA" if alpha else "RGB")
    except (RuntimeError, ValueError):
        return None
    if alpha:
        return _flatten_alpha(pixels, channels)
    return pixels if grey or channels == 3 else _grey(pixels)


def _decode_jpeg(data: bytes | bytearray, channels: int) -> np.ndarray | None:
    try:
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
        _check_pixels(width, height)
        # Over the byte budget: decode at the largest of libjpeg's scales (n/8 per side) that fits it;
        # the decoder takes the smallest scale that gives at least the sizes asked for.
        eighths = min(8, int(8 / (width * height * (channels + _PREPARE_BYTES) / MAX_DECODED_BYTES) ** 0.5))
        if eighths < 1:
            _check_size(width, height, channels)  # refused: even 1/8 would not fit
        pixels = simplejpeg.decode_jpeg(data, colorspace="GRAY" if channels == 1 else "RGB",
                                        min_height=-(-height * eighths // 8),
                                        min_width=-(-width * eighths // 8))
    except ValueError:
        if (size := jpeg_size(data)) is not None:
            _check_pixels(*size)  # a header libjpeg-turbo declines still states the size: the same limit
        return None  # CMYK, arithmetic coding and other rarities: Pillow
    return pixels[..., 0] if pixels.ndim == 3 and channels == 1 else pixels


# Start-of-frame markers: every SOFn but DHT (C4), JPG (C8) and DAC (CC).
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def jpeg_size(data: bytes | bytearray) -> tuple[int, int] | None:
    """(width, height) from a JPEG's start-of-frame segment, walking the segments before it; None if none."""
    i = 2
    while i + 9 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker in _SOF:
            return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def _check_pixels(width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise PayloadTooLarge(f"the image is {width}x{height}; the limit is {MAX_PIXELS} pixels")


def _check_size(width: int, height: int, bytes_per_pixel: int) -> None:
    """Refuse an image whose decode and preparation would hold more than MAX_DECODED_BYTES."""
    _check_pixels(width, height)
    if width * height * (bytes_per_pixel + _PREPARE_BYTES) > MAX_DECODED_BYTES:
        limit = MAX_DECODED_BYTES // (bytes_per_pixel + _PREPARE_BYTES)
        raise PayloadTooLarge(f"the image is {width}x{height}; images of this kind are limited to {limit} "
                              f"pixels ({MAX_DECODED_BYTES // 2**20} MiB decoded)")


def _decode_pillow(data: bytes | bytearray, channels: int) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            # What Pillow holds: its decode, a converted copy and numpy's copy of that (RGBA when the image
            # is transparent), then the flattened result.
            transparent = image.mode in ("RGBA", "LA", "PA", "P")
            _check_size(image.width, image.height, len(image.getbands()) + (9 if transparent else 2))
            image.load()
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        # Pillow's own bound, checked as it opens the file (before _check_size can be): the same 413 as
        # every other image over the limit.
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        raise PayloadTooLarge(f"the image has {pixels[1] if pixels else 'more'} pixels; the limit is "
                              f"{MAX_PIXELS} pixels") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InvalidInput(f"cannot decode the image: {_reason(exc)}") from None
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        return _flatten_alpha(np.asarray(image.convert("RGBA")), channels)
    return np.asarray(image.convert("L" if channels == 1 else "RGB"))


_ROWS_PIXELS = 1 << 18  # pixels a temporary array of a large image's rows holds at once (a few MiB)


def _row_chunks(height: int, width: int) -> range:
    """Row offsets that split an image into blocks of about _ROWS_PIXELS pixels."""
    return range(0, height, max(1, _ROWS_PIXELS // max(width, 1)))


def _grey(rgb: np.ndarray) -> np.ndarray:
    # ITU-R 601-2 luma in integer arithmetic, exactly as Pillow's convert("L"); a block of rows at a time,
    # so a large image costs its uint8 result, not a uint32 copy of itself.
    weights = np.array([19595, 38470, 7471], dtype=np.uint32)
    out = np.empty(rgb.shape[:2], np.uint8)
    step = _row_chunks(*rgb.shape[:2]).step
    for top in _row_chunks(*rgb.shape[:2]):
        out[top:top + step] = (rgb[top:top + step, :, :3] @ weights + 0x8000) >> 16
    return out


def _flatten_alpha(rgba: np.ndarray, channels: int = 3) -> np.ndarray:
    """A drawing on a transparent canvas, put on the ground that contrasts with its strokes (so they stay
    visible whatever colour they are): RGB, or grey when ``channels`` is 1. Integer arithmetic on blocks
    of rows: a large image costs its uint8 result, never a float copy of itself."""
    rows = _row_chunks(*rgba.shape[:2])
    weighted = opacity = 0  # sum over pixels of (r + g + b) * alpha, and of alpha
    for top in rows:
        block = rgba[top:top + rows.step]
        alpha = block[..., 3].astype(np.uint32)
        weighted += int((block[..., :3].sum(axis=2, dtype=np.uint32) * alpha).sum(dtype=np.uint64))
        opacity += int(alpha.sum(dtype=np.uint64))
    ink = weighted / 3 / 255 / max(opacity / 255, 1.0)  # the strokes' mean level, weighted by opacity
    ground = 0 if ink > 127 else 255
    flat = np.empty(rgba.shape[:2] if channels == 1 else (*rgba.shape[:2], 3), np.uint8)
    for top in rows:
        block = rgba[top:top + rows.step]
        alpha = block[..., 3:4].astype(np.uint32)
        mixed = block[..., :3] * alpha + ground * (255 - alpha)  # 255 x the composited value
        rgb = ((2 * mixed + 255) // 510).astype(np.uint8)  # rounded (a 255th is never exactly half)
        flat[top:top + rows.step] = _grey(rgb) if channels == 1 else rgb
    return flat


def _reason(exc: Exception) -> str:
    # Pillow names the BytesIO it read from ("cannot identify image file <_io.BytesIO object at 0x..>").
    if isinstance(exc, UnidentifiedImageError):
        return "not a PNG, JPEG or other image format this service reads"
    return str(exc)
