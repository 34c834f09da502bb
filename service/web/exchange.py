"""What an inference request means and what its answer is, for every way in: pure functions from a request's
parts (content type, body, parsed values) to model inputs, and from logits to the answer's bytes.

The Flask handlers (``api/v1.py``, ``api/v2.py``) and the event-loop hot path (``web/hot.py``) both call
these, so that the same request gets the same answer, byte for byte, whichever door it came through
(tests/service/test_doors.py sends the same table through both). No HTTP framework here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from service.contract.images import to_input
from service.errors import InvalidInput, PayloadTooLarge, RequestTimeout, UnsupportedMediaType
from service.handoff.catalog import ServedModel
from service.web import binary, imaging
from service.web.binary import wants_binary
from service.web.confidence import annotate, calibrated, judge
from service.web.corrections import content_hash
from service.web.limits import parse_json
from service.web.schemas import PREDICT_REQUEST, load, load_infer_request
from service.web.tensors import (
    check_input_name,
    oip_outputs,
    outputs_for,
    parse_features,
    parse_tensor,
    predictions,
    probabilities,
    threshold_for,
)

IMAGE_TYPES = ("image/", "application/octet-stream")
# A binary OIP request is a JSON header and raw bytes: tritonclient sends no content type at all.
BINARY_TYPES = ("", "application/octet-stream", "application/json")
JSON = "application/json"
DATATYPE = {"float32": "FP32", "uint8": "UINT8"}
CLASSIFY_DEFAULTS: dict[str, Any] = {"top_k": None, "include_input": False, "plain": False}
Body = bytes | bytearray | memoryview


@dataclass
class Answer:
    """A response's body, content type and the headers it needs besides the common ones."""

    body: bytes
    status: int = 200
    content_type: str = JSON
    headers: dict[str, str] = field(default_factory=dict)


# --- bodies ------------------------------------------------------------------------------------------------
# Every door reads a body the same way: a declared length over the limit is refused before anything is
# read; then it is read up to the limit and within the request's deadline.
def declared_too_large(size: int, limit: int) -> PayloadTooLarge:
    """A Content-Length over TRAINSERVE_MAX_REQUEST_BYTES."""
    return PayloadTooLarge(f"the body is {size} bytes; the limit is {limit} bytes "
                           "(TRAINSERVE_MAX_REQUEST_BYTES)")


def over_limit(limit: int) -> PayloadTooLarge:
    """A body (chunked, or longer than it said) that grew past TRAINSERVE_MAX_REQUEST_BYTES."""
    return PayloadTooLarge(f"the body is over the limit of {limit} bytes (TRAINSERVE_MAX_REQUEST_BYTES)")


def too_slow(timeout_s: float, received: int) -> RequestTimeout:
    """A body that did not arrive within the request's deadline (a stalled or trickled upload)."""
    return RequestTimeout(f"the body was not received within the request deadline of {timeout_s:g} s "
                          f"({received} bytes arrived)")


def malformed_framing(received: int, what: str) -> InvalidInput:
    """A chunked body whose framing broke (a chunk size that is no number, garbage after a chunk, or a
    stream that ended without its last chunk)."""
    return InvalidInput(f"the body's framing is malformed after {received} bytes ({what}): check its chunked "
                        "encoding")


def cut_short(received: int, declared: int) -> InvalidInput:
    """A body that ended before its Content-Length."""
    return InvalidInput(f"the body ended after {received} of the {declared} bytes its Content-Length "
                        "declares")


# --- requests ----------------------------------------------------------------------------------------------
def json_request(schema: Any, mimetype: str, raw: Body, limit: int) -> dict[str, Any]:
    """A JSON body validated by ``schema`` (415 for another content type, 400 if malformed)."""
    _json_type(mimetype)
    return load(schema, parse_json(raw, limit))


def _json_type(mimetype: str) -> None:
    if mimetype and mimetype != JSON and not mimetype.endswith("+json"):
        raise UnsupportedMediaType(f"content type {mimetype!r} is not supported here: send application/json")


def infer_request(mimetype: str, header_length: str | None, body: Body,
                  limit: int) -> dict[str, Any]:
    """An OIP inference request, JSON or binary (a JSON header and raw tensor bytes), inputs as arrays.
    For binary inputs ``body`` should be writable (a bytearray): the arrays are views over it."""
    if header_length is None:
        # tritonclient.http.aio labels a JSON-only request application/octet-stream (aiohttp's default);
        # Triton reads it.
        if mimetype != "application/octet-stream":
            _json_type(mimetype)
        request, payload = load_infer_request(parse_json(body, limit)), memoryview(b"")
    else:
        if mimetype not in BINARY_TYPES:
            raise UnsupportedMediaType(f"content type {mimetype!r} is not supported with "
                                       f"{binary.HEADER}: send application/octet-stream or none")
        header, payload = binary.split(body, header_length)
        request = load_infer_request(parse_json(header, limit))
    binary.attach_inputs(request["inputs"], payload)
    return request


def check_named(request: dict[str, Any], found: ServedModel, version: str | None) -> None:
    """A body that names its model (KServe's client does) must name the one the path addresses."""
    named, named_version = request.get("model_name"), request.get("model_version")
    if named is not None and named != found.manifest.name:
        raise InvalidInput(f"model_name {named!r} in the body is not the model in the path "
                           f"({found.manifest.name!r})")
    if named_version and version is not None and named_version != version:
        raise InvalidInput(f"model_version {named_version!r} in the body is not the version in the path "
                           f"({version!r})")


def image_model(found: ServedModel) -> None:
    """Images go only to a model that takes images."""
    if found.manifest.input.kind != "image":
        raise InvalidInput(f"model {found.manifest.name} takes named features, not images: POST them as JSON "
                           f"to /v1/models/{found.manifest.name}:predict")


def image_type(mimetype: str) -> None:
    """A raw body must say it is an image (or plain bytes)."""
    if not mimetype.startswith(IMAGE_TYPES):
        raise UnsupportedMediaType(f"content type {mimetype or 'none'!r} is not an image: send image/png, "
                                   "image/jpeg or multipart/form-data")


def image_inputs(found: ServedModel, blobs: Sequence[bytes | bytearray]) -> np.ndarray:
    """Uploaded images, decoded and prepared as the model expects, as a uint8 batch [N, C, H, W]."""
    spec = found.manifest.input
    images = [to_input(imaging.decode(blob, spec.shape[0]), spec) for blob in blobs]
    return images[0][None] if len(images) == 1 else np.stack(images)


def predict_inputs(found: ServedModel, request: dict[str, Any]) -> np.ndarray:
    """A v1 predict request's instances as the model's input batch."""
    spec = found.manifest.input
    if spec.kind == "features" and request["dtype"] == "float32":
        return parse_features(request["instances"], spec)
    return parse_tensor(request["instances"], DATATYPE[request["dtype"]], None, spec)


def predict_request(mimetype: str, raw: Body, limit: int) -> dict[str, Any]:
    """A v1 predict body, validated."""
    return json_request(PREDICT_REQUEST, mimetype, raw, limit)


def infer_inputs(found: ServedModel, request: dict[str, Any]) -> tuple[np.ndarray, float]:
    """An OIP request's input tensor as the model's input batch, and the decision threshold it asks for."""
    m = found.manifest
    tensor = request["inputs"][0]
    check_input_name(tensor["name"], m.input, m.name)
    threshold = threshold_for(m, request["parameters"].get("threshold"))
    return parse_tensor(tensor["data"], tensor["datatype"], tensor["shape"], m.input), threshold


# --- answers -----------------------------------------------------------------------------------------------
def finite(logits: np.ndarray) -> np.ndarray:
    """The runtime's logits, refused when a row is not finite."""
    if not np.isfinite(logits).all():
        # Finite inputs the net overflows on (feature values far outside what it was trained on): the
        # input's doing, and no probability can be given for it.
        rows = np.flatnonzero(~np.isfinite(logits).all(axis=1)).tolist()
        raise InvalidInput(f"the model's output is not finite for example(s) {rows[:10]}: their values are "
                           "far outside what the model was trained on")
    return logits


def json_answer(payload: dict[str, Any], status: int = 200) -> Answer:
    """A JSON answer; numpy arrays in ``payload`` are written directly, without Python lists."""
    return Answer(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), status)


def predictions_answer(found: ServedModel, logits: np.ndarray, top_k: int | None,
                       threshold: float | None = None, shown: np.ndarray | None = None,
                       plain: bool = False) -> Answer:
    """The v1 answer (``:predict`` and ``:classify``): labels and calibrated probabilities per example, and
    the "not a digit" verdict where the model has one (a flagged example's label withheld unless
    ``plain``)."""
    return json_answer(predictions_payload(found, logits, top_k, threshold, shown, plain))


def predictions_payload(found: ServedModel, logits: np.ndarray, top_k: int | None,
                        threshold: float | None = None, shown: np.ndarray | None = None,
                        plain: bool = False) -> dict[str, Any]:
    """What ``predictions_answer`` encodes (``:explain`` adds its explanations to it)."""
    m = found.manifest
    threshold = threshold_for(m, threshold)
    answer: dict[str, Any] = {"model": m.name, "version": m.version, "task": m.task}
    if m.task != "multiclass":
        answer["threshold"] = threshold
    scaled = calibrated(logits, m)
    probs = probabilities(scaled, m.task)  # once, for the answer and the verdict
    answered = predictions(scaled, m.labels, top_k, m.task, threshold, probs)
    answer["predictions"] = annotate(answered, judge(scaled, m, probs), plain)
    if shown is not None:  # what preprocessing made of each image, as the model got it
        for prediction, example in zip(answer["predictions"], shown, strict=True):
            prediction["input"] = example
            prediction["input_hash"] = content_hash(example)
    return answer


def infer_answer(found: ServedModel, request: dict[str, Any], logits: np.ndarray, threshold: float) -> Answer:
    """An OIP inference answer: JSON, or a JSON header and the outputs flagged binary as raw bytes."""
    answer = infer_document(found, request, logits, threshold)
    requested = request["outputs"] or [{"name": output["name"]} for output in answer["outputs"]]
    chunks, header_length = binary.encode(answer, [wants_binary(o, request["parameters"]) for o in requested])
    if header_length is None:
        return Answer(chunks[0])
    return Answer(b"".join(chunks), content_type="application/octet-stream",
                  headers={binary.HEADER: str(header_length)})


def infer_document(found: ServedModel, request: dict[str, Any], logits: np.ndarray,
                   threshold: float) -> dict[str, Any]:
    """An OIP inference answer as a document (outputs' ``data`` as arrays), before any door encodes it."""
    m = found.manifest
    scaled = calibrated(logits, m)
    probs = probabilities(scaled, m.task)
    verdict = judge(scaled, m, probs)
    names = outputs_for(m.task, verdict is not None)
    requested = request["outputs"] or [{"name": output} for output in names]
    outputs = oip_outputs(scaled, requested, m.labels, m.task, threshold, verdict,
                          request["parameters"].get("plain", False), probs)
    answer: dict[str, Any] = {"model_name": m.name, "model_version": m.version, "outputs": outputs}
    if m.task != "multiclass":
        answer["parameters"] = {"task": m.task, "threshold": threshold}
    if "id" in request:
        answer["id"] = request["id"]
    return answer


def error_body(message: str) -> bytes:
    """The JSON body of every error, ``{"error": "..."}``."""
    return orjson.dumps({"error": message}) + b"\n"
