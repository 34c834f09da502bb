"""What every protocol's handlers share: the data plane, body parsing, the model lookup, JSON responses."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from flask import Response, current_app, g, request
from marshmallow import Schema

from service import imaging
from service.dataplane import DataPlane
from service.errors import InvalidInput, UnsupportedMediaType
from service.registry import LoadedModel
from service.schemas import load

EXTENSION = "trainserve"
IMAGE_TYPES = ("image/", "application/octet-stream")


def plane() -> DataPlane:
    """This app's data plane."""
    return current_app.extensions[EXTENSION]


def model(name: str, version: str | None = None) -> LoadedModel:
    """The addressed model; also names it in this request's metrics (only once it is known to exist)."""
    found = plane().model(name, version)
    g.model = name
    return found


def json_body(schema: Schema) -> dict[str, Any]:
    """The request's JSON body, validated by ``schema`` (415 for another content type, 400 if malformed)."""
    mimetype = request.mimetype
    if mimetype and mimetype != "application/json" and not mimetype.endswith("+json"):
        raise UnsupportedMediaType(f"content type {mimetype!r} is not supported here: send application/json")
    try:
        data = orjson.loads(request.get_data(cache=False))
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"malformed JSON: {exc}") from None
    return load(schema, data)


def image_batch(found: LoadedModel) -> np.ndarray:
    """Uploaded images (a raw body, or one or many multipart files) as a uint8 batch [N, C, H, W]."""
    mimetype = request.mimetype
    if mimetype == "multipart/form-data":
        blobs = [f.read() for _, f in request.files.items(multi=True)]
        if not blobs:
            raise InvalidInput("the multipart body holds no file")
    elif mimetype.startswith(IMAGE_TYPES):
        blobs = [request.get_data(cache=False)]
    else:
        raise UnsupportedMediaType(f"content type {mimetype or 'none'!r} is not an image: send image/png, "
                                   "image/jpeg or multipart/form-data")
    spec = found.manifest.input
    return np.stack([imaging.to_input(imaging.decode(blob, spec.shape[0]), spec) for blob in blobs])


def logits(found: LoadedModel, inputs: np.ndarray) -> np.ndarray:
    """Run ``inputs`` through the model's batcher, with this request's deadline."""
    return plane().infer(found, inputs, g.arrived)


def respond(payload: dict[str, Any], status: int = 200) -> Response:
    """A JSON response; numpy arrays in ``payload`` are written directly, without Python lists."""
    body = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(body, status=status, mimetype="application/json")
