"""What every protocol's Flask handlers share: the data plane, the request's parts handed to
``web/exchange.py`` (the functions every door calls), the model lookup, responses."""

from __future__ import annotations

from typing import Any

import numpy as np
from flask import Response, current_app, g, request

from service.errors import InvalidInput
from service.handoff.catalog import ServedModel
from service.routing import split
from service.web import binary, exchange, limits
from service.web.dataplane import DataPlane
from service.web.followups import Followup

EXTENSION = "trainserve"


def plane() -> DataPlane:
    """This app's data plane."""
    return current_app.extensions[EXTENSION]


def model(name: str, version: str | None = None) -> ServedModel:
    """The addressed model; also names it in this request's metrics (only once it is known to exist)."""
    found = plane().model(name, version)
    g.model = name
    g.version = found.manifest.version
    return found


def routed(name: str, version: str | None = None) -> ServedModel:
    """The version that answers this inference request (``service/routing/split.py``: the URL's, else the
    default or a canary), named in its metrics; what follows the answer is decided with it."""
    decision = split.resolve(plane().catalog, name, version, request.headers.get(split.CLIENT_HEADER))
    g.model, g.version, g.routed = name, decision.model.manifest.version, decision
    return decision.model


def json_limit() -> int:
    """TRAINSERVE_MAX_JSON_BYTES."""
    return current_app.config["TRAINSERVE"].max_json_bytes


def parse_json(raw: bytes | memoryview) -> Any:
    """A JSON body within TRAINSERVE_MAX_JSON_BYTES (413 beyond), 400 when malformed."""
    return exchange.parse_json(raw, json_limit())


def infer_body() -> dict[str, Any]:
    """This request's OIP inference body, JSON or binary, inputs as arrays."""
    header_length = request.headers.get(binary.HEADER)
    body = _body_buffer() if header_length is not None else request.get_data(cache=False)
    return exchange.infer_request(request.mimetype, header_length, body, json_limit())


def _body_buffer() -> bytearray:
    # A writable buffer the tensors can be read from in place (torch.from_numpy refuses read-only memory).
    # The app's before_request hook has bounded the size already (and given a chunked body its length).
    size = request.content_length
    if size is None:  # no body at all
        return bytearray(request.get_data(cache=False))
    buffer = bytearray(size)
    view, done, stream = memoryview(buffer), 0, request.stream
    # werkzeug types the stream as IO[bytes], which declares no readinto; its streams and the servers' have it
    while done < size and (n := stream.readinto(view[done:])):  # type: ignore[attr-defined]
        done += n
    if done != size:
        raise InvalidInput(f"the body ended after {done} of its {size} bytes")
    return buffer


def image_batch(found: ServedModel) -> np.ndarray:
    """Uploaded images (a raw body, or one or many multipart files) as a uint8 batch [N, C, H, W]."""
    exchange.image_model(found)
    if request.mimetype == "multipart/form-data":
        # Counted before werkzeug parses: its own part limit would answer without saying which limit.
        limits.check_parts(limits.multipart_parts(request.get_data(cache=True),
                                                  request.mimetype_params.get("boundary", "")))
        blobs = [f.read() for _, f in request.files.items(multi=True)]
        if not blobs:
            raise InvalidInput("the multipart body holds no file")
    else:
        exchange.image_type(request.mimetype)
        blobs = [request.get_data(cache=False)]
    return exchange.image_inputs(found, blobs)


def logits(found: ServedModel, inputs: np.ndarray) -> np.ndarray:
    """Run ``inputs`` through the model's batcher, with this request's deadline."""
    out = plane().infer(found, inputs, g.arrived)
    if "routed" in g:
        g.followup = Followup(g.routed, inputs, out)
    return out


def respond(payload: dict[str, Any], status: int = 200) -> Response:
    """A JSON response; numpy arrays in ``payload`` are written directly, without Python lists."""
    return response(exchange.json_answer(payload, status))


def response(answer: exchange.Answer) -> Response:
    """The Flask response of an answer."""
    flask_response = Response(answer.body, status=answer.status, content_type=answer.content_type)
    flask_response.headers.update(answer.headers)
    return flask_response
