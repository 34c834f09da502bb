"""What every protocol's handlers share: the data plane, body parsing, the model lookup, JSON responses."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from flask import Response, current_app, g, request
from marshmallow import Schema

from service.errors import InvalidInput, UnsupportedMediaType
from service.runtime.catalog import ServedModel
from service.web import binary, imaging, limits
from service.web.dataplane import DataPlane
from service.web.schemas import load

EXTENSION = "trainserve"
IMAGE_TYPES = ("image/", "application/octet-stream")
# A binary OIP request is a JSON header and raw bytes: tritonclient sends no content type at all.
BINARY_TYPES = ("", "application/octet-stream", "application/json")


def plane() -> DataPlane:
    """This app's data plane."""
    return current_app.extensions[EXTENSION]


def model(name: str, version: str | None = None) -> ServedModel:
    """The addressed model; also names it in this request's metrics (only once it is known to exist)."""
    found = plane().model(name, version)
    g.model = name
    g.version = found.manifest.version
    return found


def json_body(schema: Schema) -> dict[str, Any]:
    """The request's JSON body, validated by ``schema`` (415 for another content type, 400 if malformed)."""
    mimetype = request.mimetype
    if mimetype and mimetype != "application/json" and not mimetype.endswith("+json"):
        raise UnsupportedMediaType(f"content type {mimetype!r} is not supported here: send application/json")
    return _load_json(schema, request.get_data(cache=False))


def infer_body(schema: Schema) -> dict[str, Any]:
    """An OIP inference request, JSON or binary (a JSON header and raw tensor bytes), inputs as arrays."""
    header_length = request.headers.get(binary.HEADER)
    if header_length is None and request.mimetype == "application/octet-stream":
        # tritonclient.http.aio sends a JSON-only request labelled so (aiohttp's default); Triton reads it.
        body, payload = _load_json(schema, request.get_data(cache=False)), memoryview(b"")
    elif header_length is None:
        body, payload = json_body(schema), memoryview(b"")
    else:
        if request.mimetype not in BINARY_TYPES:
            raise UnsupportedMediaType(f"content type {request.mimetype!r} is not supported with "
                                       f"{binary.HEADER}: send application/octet-stream or none")
        header, payload = binary.split(_body_buffer(), header_length)
        body = _load_json(schema, header)
    binary.attach_inputs(body["inputs"], payload)
    return body


def check_named(body: dict[str, Any], found: ServedModel, version: str | None) -> None:
    """A body that names its model (KServe's client does) must name the one the path addresses."""
    named, named_version = body.get("model_name"), body.get("model_version")
    if named is not None and named != found.manifest.name:
        raise InvalidInput(f"model_name {named!r} in the body is not the model in the path "
                           f"({found.manifest.name!r})")
    if named_version and version is not None and named_version != version:
        raise InvalidInput(f"model_version {named_version!r} in the body is not the version in the path "
                           f"({version!r})")


def _load_json(schema: Schema, raw: bytes | memoryview) -> dict[str, Any]:
    return load(schema, parse_json(raw))


def parse_json(raw: bytes | memoryview) -> Any:
    """A JSON body or header within TRAINSERVE_MAX_JSON_BYTES (413 beyond), 400 when malformed or when an
    object repeats a key (``limits.parse_json``)."""
    return limits.parse_json(raw, current_app.config["TRAINSERVE"].max_json_bytes)


def _body_buffer() -> bytearray:
    # A writable buffer the tensors can be read from in place (torch.from_numpy refuses read-only memory).
    # The app's before_request hook has bounded the size already (and given a chunked body its length).
    size = request.content_length
    if size is None:  # no body at all
        return bytearray(request.get_data(cache=False))
    buffer = bytearray(size)
    view, done, stream = memoryview(buffer), 0, request.stream
    while done < size and (n := stream.readinto(view[done:])):
        done += n
    if done != size:
        raise InvalidInput(f"the body ended after {done} of its {size} bytes")
    return buffer


def image_batch(found: ServedModel) -> np.ndarray:
    """Uploaded images (a raw body, or one or many multipart files) as a uint8 batch [N, C, H, W]."""
    if found.manifest.input.kind != "image":
        raise InvalidInput(f"model {found.manifest.name} takes named features, not images: POST them as JSON "
                           f"to /v1/models/{found.manifest.name}:predict")
    mimetype = request.mimetype
    if mimetype == "multipart/form-data":
        # Counted before werkzeug parses: its own part limit would answer without saying which limit.
        limits.check_parts(limits.multipart_parts(request.get_data(cache=True),
                                                  request.mimetype_params.get("boundary", "")))
        blobs = [f.read() for _, f in request.files.items(multi=True)]
        if not blobs:
            raise InvalidInput("the multipart body holds no file")
    elif mimetype.startswith(IMAGE_TYPES):
        blobs = [request.get_data(cache=False)]
    else:
        raise UnsupportedMediaType(f"content type {mimetype or 'none'!r} is not an image: send image/png, "
                                   "image/jpeg or multipart/form-data")
    spec = found.manifest.input
    images = [imaging.to_input(imaging.decode(blob, spec.shape[0]), spec) for blob in blobs]
    return images[0][None] if len(images) == 1 else np.stack(images)


def logits(found: ServedModel, inputs: np.ndarray) -> np.ndarray:
    """Run ``inputs`` through the model's batcher, with this request's deadline."""
    return plane().infer(found, inputs, g.arrived)


def respond(payload: dict[str, Any], status: int = 200) -> Response:
    """A JSON response; numpy arrays in ``payload`` are written directly, without Python lists."""
    body = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(body, status=status, mimetype="application/json")


def respond_infer(answer: dict[str, Any], binary_outputs: list[bool]) -> Response:
    """An OIP inference response: JSON, or a JSON header and the flagged outputs as raw bytes."""
    chunks, header_length = binary.encode(answer, binary_outputs)
    if header_length is None:
        return Response(chunks[0], mimetype="application/json")
    response = Response(b"".join(chunks), mimetype="application/octet-stream")
    response.headers[binary.HEADER] = str(header_length)
    return response
