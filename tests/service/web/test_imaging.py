"""Uploaded images are prepared as MNIST was made, so they classify as the tensors of the same digits do."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from service.contract import images
from service.contract.manifest import InputSpec
from service.errors import InvalidInput, PayloadTooLarge
from service.web import imaging

SPEC = InputSpec(shape=(1, 28, 28))
COUNT = 100


def png(pixels: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, format="PNG")
    return buffer.getvalue()


def inverted(digit: np.ndarray) -> np.ndarray:
    return 255 - digit


def off_centre(digit: np.ndarray) -> np.ndarray:
    canvas = np.zeros((90, 120), np.uint8)
    canvas[5:33, 80:108] = digit
    return canvas


def enlarged_dark_on_light(digit: np.ndarray) -> np.ndarray:
    big = np.asarray(Image.fromarray(digit).resize((112, 112), Image.Resampling.BICUBIC))
    canvas = np.zeros((200, 160), np.uint8)
    canvas[60:172, 10:122] = big
    return 255 - canvas


def test_a_clean_mnist_digit_comes_back_nearly_unchanged(mnist):
    digit = mnist["test_x"][0]
    prepared = images.to_input(imaging.decode(png(digit)), SPEC)[0]
    assert prepared.shape == (28, 28) and prepared.dtype == np.uint8
    assert np.abs(prepared.astype(int) - digit).mean() < 12


@pytest.mark.parametrize("variant", [None, inverted, off_centre, enlarged_dark_on_light])
def test_png_uploads_classify_as_the_tensor_path_does(client, mnist, variant):
    digits = mnist["test_x"][:COUNT]
    tensor = client.post("/v1/models/mnist-tiny:predict",
                         json={"instances": digits.tolist(), "dtype": "uint8"})
    uploads = [png(variant(d) if variant else d) for d in digits]
    files = {f"f{i}": (io.BytesIO(blob), f"{i}.png") for i, blob in enumerate(uploads)}
    image = client.post("/v1/models/mnist-tiny:classify", data=files, content_type="multipart/form-data")
    assert tensor.status_code == image.status_code == 200, image.json
    expected = [p["label"] for p in tensor.json["predictions"]]
    got = [p["label"] for p in image.json["predictions"]]
    agreement = np.mean(np.asarray(expected) == np.asarray(got))
    assert agreement >= 0.95, f"{agreement:.2f} agreement"


def test_a_drawing_on_a_transparent_canvas_keeps_its_strokes(mnist):
    digit = mnist["test_x"][1]
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., 3] = digit  # black strokes, drawn only in the alpha channel
    prepared = images.to_input(imaging.decode(png(rgba, "RGBA")), SPEC)[0]
    reference = images.to_input(imaging.decode(png(digit)), SPEC)[0]
    assert np.abs(prepared.astype(int) - reference).mean() < 3


def test_blank_image_gives_an_empty_field():
    assert not images.to_input(imaging.decode(png(np.full((50, 40), 255, np.uint8))), SPEC).any()


def test_undecodable_images_are_invalid_and_oversized_ones_too_large(monkeypatch):
    with pytest.raises(InvalidInput, match="cannot decode"):
        imaging.decode(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(InvalidInput, match="not a PNG, JPEG or other image format") as refused:
        imaging.decode(b"no image at all")
    assert "BytesIO" not in refused.value.message  # no repr of internals
    monkeypatch.setattr(imaging, "MAX_PIXELS", 100)
    with pytest.raises(PayloadTooLarge, match="the limit is 100 pixels"):
        imaging.decode(png(np.zeros((20, 20), np.uint8)))


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("kind", ["L", "RGB", "RGBA", "LA", "P", "P+alpha", "1", "GIF", "JPEG L", "JPEG RGB"])
def test_fast_decoders_give_the_pixels_pillow_gives(kind, channels):
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (30, 41, 4), dtype=np.uint8)
    images = {"L": Image.fromarray(rgba[..., 0]), "RGB": Image.fromarray(rgba[..., :3]),
              "RGBA": Image.fromarray(rgba), "LA": Image.fromarray(rgba[..., [0, 3]]),
              "P": Image.fromarray(rgba[..., :3]).convert("P"),
              "1": Image.fromarray(rgba[..., 0]).convert("1")}
    if kind.startswith("JPEG"):
        data = _encode(images[kind.split()[1]], "JPEG", quality=95)
    elif kind == "GIF":
        data = _encode(images["L"], "GIF")
    elif kind == "P+alpha":
        data = _encode(images["P"], "PNG", transparency=0)
    else:
        data = _encode(images[kind], "PNG")
    decoded, expected = imaging.decode(data, channels), imaging._decode_pillow(data, channels)
    assert decoded.shape == expected.shape and decoded.dtype == np.uint8
    # libjpeg-turbo's grey output is the Y channel; Pillow converts decoded RGB: a few levels apart.
    tolerance = 8 if kind == "JPEG RGB" and channels == 1 else 0
    assert np.abs(decoded.astype(int) - expected).max() <= tolerance


def test_size_is_checked_from_the_header_before_decoding(monkeypatch):
    monkeypatch.setattr(imaging, "MAX_PIXELS", 100)
    jpeg = _encode(Image.fromarray(np.zeros((20, 20), np.uint8)), "JPEG")
    with pytest.raises(PayloadTooLarge, match="20x20; the limit is 100 pixels"):
        imaging.decode(jpeg)
    with pytest.raises(InvalidInput, match="cannot decode"):
        imaging.decode(jpeg[:30])


def _float_flatten(rgba: np.ndarray) -> np.ndarray:
    """The compositing rule in plain float arithmetic, the reference for the integer implementation."""
    rgba = rgba.astype(np.float64)
    alpha = rgba[..., 3] / 255.0
    ink = (rgba[..., :3].mean(axis=2) * alpha).sum() / max(alpha.sum(), 1.0)
    ground = 0.0 if ink > 127 else 255.0
    return (rgba[..., :3] * alpha[..., None] + ground * (1.0 - alpha[..., None])).round().astype(np.uint8)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_transparency_is_flattened_exactly_as_the_float_rule_says(seed):
    rgba = np.random.default_rng(seed).integers(0, 256, (37, 53, 4), dtype=np.uint8)
    if seed == 2:
        rgba[..., :3] //= 8  # dark strokes: a light ground
    np.testing.assert_array_equal(imaging._flatten_alpha(rgba), _float_flatten(rgba))


def test_a_large_transparent_image_costs_about_its_own_size_not_a_float_copy():
    import tracemalloc

    rgba = np.zeros((4000, 4000, 4), np.uint8)  # 16 megapixels, 64 MB as decoded
    rgba[1000:3000, 1800:2200] = 255
    tracemalloc.start()
    try:
        grey = imaging._flatten_alpha(rgba, channels=1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert grey.shape == (4000, 4000) and grey[2000, 2000] == 255 and grey[0, 0] == 0
    # the 16 MB grey result plus blocks of a quarter megapixel: not 16 MP of float32 x 4
    assert peak < 32 * 2**20, f"{peak / 2**20:.0f} MiB"
    np.testing.assert_array_equal(grey, imaging._grey(imaging._flatten_alpha(rgba)))


def _peak_of(fn, *args):
    import tracemalloc

    tracemalloc.start()
    try:
        result = fn(*args)
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA"])
def test_an_image_over_the_decoded_budget_is_refused_before_decoding(mode):
    side = int((imaging.MAX_DECODED_BYTES / 4) ** 0.5) + 64  # over budget in every mode, even grey
    pixels = np.zeros((side, side, len(mode)), np.uint8).squeeze()
    data = png(pixels, mode)
    with pytest.raises(PayloadTooLarge, match="MiB decoded"):
        imaging.decode(data)


def test_a_large_photo_is_decoded_at_a_reduced_scale_within_the_budget():
    photo = np.full((6000, 4000, 3), 255, np.uint8)  # 24 megapixels, 72 MB as decoded RGB
    photo[2000:4000, 1500:2500] = 0  # a dark stroke on white
    data = _encode(Image.fromarray(photo), "JPEG", quality=80)
    (prepared, peak) = _peak_of(lambda d: images.to_input(imaging.decode(d), SPEC), data)
    assert peak <= imaging.MAX_DECODED_BYTES, f"{peak / 2**20:.0f} MiB"
    assert prepared.shape == (1, 28, 28) and prepared.max() == 255 and prepared[0, 0, 0] == 0


def test_a_full_size_grey_image_is_prepared_within_the_budget():
    side = int((imaging.MAX_DECODED_BYTES / 4) ** 0.5) - 64  # just within the grey budget
    grey = np.full((side, side), 255, np.uint8)
    grey[side // 4: side // 2, side // 3: side // 2] = 0
    data = png(grey)
    prepared, peak = _peak_of(lambda d: images.to_input(imaging.decode(d), SPEC), data)
    assert peak <= imaging.MAX_DECODED_BYTES, f"{peak / 2**20:.0f} MiB"
    assert prepared.max() == 255
