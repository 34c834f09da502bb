"""Property-based tests of the request decoders (hypothesis): the OIP binary tensor extension and the
image decoders take any bytes and give either a result or a client error (InvalidInput, PayloadTooLarge),
never another exception; through the app, never a 5xx. Fixed seed, bounded examples."""

from __future__ import annotations

import io
import os

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from service.contract import images
from service.contract.manifest import InputSpec
from service.errors import InvalidInput, PayloadTooLarge
from service.web import binary, imaging

CLIENT_ERRORS = (InvalidInput, PayloadTooLarge)
SPEC = InputSpec(shape=(1, 28, 28))
RGB_SPEC = InputSpec(shape=(3, 32, 32), image_preprocessing="resize")
# TRAINSERVE_FUZZ_SCALE=20 for a longer hunt (the same seed, more cases).
SCALE = int(os.environ.get("TRAINSERVE_FUZZ_SCALE", "1"))
FUZZ = settings(max_examples=150 * SCALE, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
THROUGH_APP = settings(FUZZ, max_examples=60 * SCALE)


# ---- the binary tensor data extension ----

json_scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=4)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=8)
sizes = st.integers(-3, 4000) | st.sampled_from([0, 1, 784, 3136]) | json_values
# Inputs as the request schema lets them through: a name, 1..8 dims >= 1, a datatype; parameters and data
# are whatever the client sent.
tensor_inputs = st.fixed_dictionaries(
    {"name": st.text(max_size=8), "datatype": st.sampled_from(["FP32", "UINT8"]),
     "shape": st.lists(st.integers(1, 2**40) | st.sampled_from([1, 28, 784]), min_size=1, max_size=8)},
    optional={"parameters": st.fixed_dictionaries({}, optional={"binary_data_size": sizes}),
              "data": st.lists(st.integers(0, 255), min_size=1, max_size=4)})


@FUZZ
@given(body=st.binary(max_size=300), header=st.text(max_size=12) | st.integers(-5, 400).map(str))
def test_split_gives_the_header_and_the_rest_or_invalid_input(body, header):
    try:
        head, payload = binary.split(body, header)
    except InvalidInput:
        return
    assert 0 < len(head) <= len(body) and bytes(head) + bytes(payload) == body


@FUZZ
@given(inputs=st.lists(tensor_inputs, min_size=1, max_size=3), payload=st.binary(max_size=4000))
def test_attach_inputs_reads_exactly_the_declared_bytes_or_refuses(inputs, payload):
    try:
        binary.attach_inputs(inputs, memoryview(payload))
    except InvalidInput:
        return
    read = 0
    for tensor in inputs:
        if isinstance(tensor["data"], np.ndarray):
            assert tensor["data"].shape == tuple(tensor["shape"])
            read += tensor["data"].nbytes
    assert read == len(payload)


def _binary_request(pixels: bytes, shape: list[int], datatype: str, declared: int | None,
                    extra_header: bytes) -> tuple[bytes, str]:
    parameters = {} if declared is None else {"binary_data_size": declared}
    header = orjson.dumps({"inputs": [{"name": "input", "shape": shape, "datatype": datatype,
                                       "parameters": parameters}]}) + extra_header
    return header + pixels, str(len(header))


binary_requests = st.builds(
    _binary_request,
    pixels=st.binary(max_size=3200) | st.sampled_from([bytes(784), bytes(3136), bytes(784 * 2)]),
    shape=st.sampled_from([[1, 784], [1, 1, 28, 28], [2, 784], [1, 28, 28], [1, 783]])
    | st.lists(st.integers(1, 1000), min_size=1, max_size=5),
    datatype=st.sampled_from(["FP32", "UINT8"]),
    declared=st.none() | st.integers(0, 4000) | st.sampled_from([784, 3136]),
    extra_header=st.sampled_from([b"", b" ", b"\x00", b"}"]))


@THROUGH_APP
@given(request=binary_requests, offset=st.integers(-3, 3), content_type=st.sampled_from(
    [None, "application/octet-stream", "application/json"]))
def test_binary_requests_through_the_app_get_200_or_a_json_4xx(client, request, offset, content_type):
    body, length = request
    headers = {binary.HEADER: str(int(length) + offset)}
    if content_type:
        headers["Content-Type"] = content_type
    response = client.post("/v2/models/mnist-tiny/infer", data=body, headers=headers)
    assert response.status_code in (200, 400), response.get_data()[:300]
    if response.status_code == 400:
        assert set(response.json) == {"error"}


# ---- the image decoders ----

def _image(pixels: np.ndarray, fmt: str, mode: str | None = None, **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def real_images(mnist) -> list[bytes]:
    """Real files of real digits, in the forms clients send: grey, RGB, RGBA, palette with a transparent
    colour, 16-bit PNG; grey, colour and progressive JPEG."""
    digit = mnist["test_x"][0]
    rgb = np.stack([digit, 255 - digit, digit // 2], axis=2)
    rgba = np.dstack([rgb, digit])
    palette = Image.fromarray(digit).convert("P")
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG", transparency=0)
    return [_image(digit, "PNG"), _image(rgb, "PNG"), _image(rgba, "PNG"), buffer.getvalue(),
            _image(digit.astype(np.uint16) * 257, "PNG"), _image(digit, "JPEG", quality=90),
            _image(rgb, "JPEG"), _image(rgb, "JPEG", progressive=True), _image(digit, "GIF")]


def _mutate(data: bytes, cut: int | None, flips: list[tuple[int, int]], inserted: tuple[int, bytes]) -> bytes:
    out = bytearray(data if cut is None else data[:cut])
    for position, value in flips:
        if out:
            out[position % len(out)] = value
    at, extra = inserted
    return bytes(out[:at] + extra + out[at:])


@st.composite
def mutated_images(draw: st.DrawFn, images: list[bytes]) -> bytes:
    data = draw(st.sampled_from(images))
    cut = draw(st.none() | st.integers(0, len(data)))
    flips = draw(st.lists(st.tuples(st.integers(0, 4096), st.integers(0, 255)), max_size=6))
    inserted = draw(st.tuples(st.integers(0, 64), st.binary(max_size=16)))
    return _mutate(data, cut, flips, inserted)


@st.composite
def resized_headers(draw: st.DrawFn, images: list[bytes]) -> bytes:
    """A real PNG whose IHDR claims another size (up to a decompression bomb's), its CRC left wrong."""
    data = bytearray(draw(st.sampled_from(images[:5])))
    width, height = (draw(st.integers(0, 2**31 - 1) | st.sampled_from([1, 28, 6000, 40000, 2**16]))
                     for _ in range(2))
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    return bytes(data)


def _decodes_or_refuses(data: bytes, spec: InputSpec) -> None:
    try:
        pixels = imaging.decode(data, spec.shape[0])
    except CLIENT_ERRORS:
        return
    assert pixels.dtype == np.uint8 and pixels.ndim == (2 if spec.shape[0] == 1 else 3)
    assert pixels.size > 0
    prepared = images.to_input(pixels, spec)
    assert prepared.shape == spec.shape and prepared.dtype == np.uint8


@FUZZ
@given(data=st.binary(max_size=600) | st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a"])
       .flatmap(lambda magic: st.binary(max_size=200).map(lambda rest: magic + rest)))
def test_any_bytes_decode_or_are_refused_as_a_client_error(data):
    _decodes_or_refuses(data, SPEC)
    _decodes_or_refuses(data, RGB_SPEC)


@FUZZ
@given(data=st.data())
def test_truncated_and_mutated_real_images_decode_or_are_refused(real_images, data):
    blob = data.draw(mutated_images(real_images) | resized_headers(real_images))
    _decodes_or_refuses(blob, SPEC)
    _decodes_or_refuses(blob, RGB_SPEC)


@THROUGH_APP
@given(data=st.data(), as_file=st.booleans())
def test_mutated_uploads_through_the_app_get_200_or_a_json_4xx(client, real_images, data, as_file):
    blob = data.draw(mutated_images(real_images) | resized_headers(real_images))
    if as_file:
        response = client.post("/v1/models/mnist-tiny:classify", content_type="multipart/form-data",
                               data={"file": (io.BytesIO(blob), "digit.png")})
    else:
        response = client.post("/v1/models/mnist-tiny:classify", data=blob, content_type="image/png")
    assert response.status_code in (200, 400, 413), response.get_data()[:300]
    if response.status_code != 200:
        assert set(response.json) == {"error"}
    else:
        assert len(response.json["predictions"]) == 1


def test_the_real_images_themselves_decode(real_images):
    # The mutations start from files the decoders take: otherwise every mutant would be refused anyway.
    for blob in real_images:
        assert images.to_input(imaging.decode(blob), SPEC).shape == SPEC.shape
        assert images.to_input(imaging.decode(blob, 3), RGB_SPEC).shape == RGB_SPEC.shape
