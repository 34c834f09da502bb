"""Uploaded images are prepared as MNIST was made, so they classify as the tensors of the same digits do."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from service import imaging
from service.errors import InvalidInput
from service.manifest import InputSpec

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
    prepared = imaging.to_input(imaging.decode(png(digit)), SPEC)[0]
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
    prepared = imaging.to_input(imaging.decode(png(rgba, "RGBA")), SPEC)[0]
    reference = imaging.to_input(imaging.decode(png(digit)), SPEC)[0]
    assert np.abs(prepared.astype(int) - reference).mean() < 3


def test_blank_image_gives_an_empty_field():
    assert not imaging.to_input(imaging.decode(png(np.full((50, 40), 255, np.uint8))), SPEC).any()


def test_undecodable_and_oversized_images_are_invalid(monkeypatch):
    with pytest.raises(InvalidInput, match="cannot decode"):
        imaging.decode(b"\x89PNG\r\n\x1a\n truncated")
    monkeypatch.setattr(imaging, "MAX_PIXELS", 100)
    with pytest.raises(InvalidInput, match="at most 100 pixels"):
        imaging.decode(png(np.zeros((20, 20), np.uint8)))
