"""A simple JSON API: list models, predict from pixel lists, classify uploaded images."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, request

from service.runtime.client import ServedModel
from service.web.api.common import image_batch, json_body, logits, model, plane, respond
from service.web.inference import parse_features, parse_tensor, predictions, threshold_for
from service.web.schemas import CLASSIFY_ARGS, PREDICT_REQUEST, load

bp = Blueprint("v1", __name__, url_prefix="/v1")

DATATYPE = {"float32": "FP32", "uint8": "UINT8"}


def describe(found: ServedModel, ready: bool) -> dict[str, Any]:
    """A model's summary for the listing."""
    m = found.manifest
    summary = {"name": m.name, "version": m.version, "architecture": m.architecture, "task": m.task,
               "labels": list(m.labels), "input_shape": list(m.input.shape), "input_kind": m.input.kind,
               "test_accuracy": m.metrics.get("test_accuracy"), "ready": ready}
    if m.input.kind == "features":
        summary["features"] = list(m.input.features)
    if m.task != "multiclass":
        summary["threshold"] = m.threshold
    return summary


@bp.get("/models")
def list_models() -> Response:
    """Every served model version; ``default`` marks the version a bare name addresses."""
    served = plane().registry
    ready = plane().ready  # one ping of every runtime for the whole listing, not one per model
    return respond({"models": [describe(m, ready) | {"default": m is served.get(m.manifest.name)}
                               for m in served]})


@bp.post("/models/<name>:predict")
@bp.post("/models/<name>/versions/<version>:predict")
def predict(name: str, version: str | None = None) -> Response:
    """Labels and probabilities for images sent as pixel lists, or for rows of named features."""
    found = model(name, version)
    body = json_body(PREDICT_REQUEST)
    spec = found.manifest.input
    if spec.kind == "features" and body["dtype"] == "float32":
        inputs = parse_features(body["instances"], spec)
    else:
        inputs = parse_tensor(body["instances"], DATATYPE[body["dtype"]], None, spec)
    return _answer(found, inputs, body["top_k"], body["threshold"])


@bp.post("/models/<name>:classify")
@bp.post("/models/<name>/versions/<version>:classify")
def classify(name: str, version: str | None = None) -> Response:
    """Labels and probabilities for uploaded PNG/JPEG images (raw body or multipart files)."""
    found = model(name, version)
    # No query string (the usual case) needs no validation: a schema load costs more than the decode.
    top_k = load(CLASSIFY_ARGS, request.args.to_dict())["top_k"] if request.args else None
    return _answer(found, image_batch(found), top_k)


def _answer(found: ServedModel, inputs: Any, top_k: int | None, threshold: float | None = None) -> Response:
    m = found.manifest
    threshold = threshold_for(m, threshold)
    answer: dict[str, Any] = {"model": m.name, "version": m.version, "task": m.task}
    if m.task != "multiclass":
        answer["threshold"] = threshold
    answer["predictions"] = predictions(logits(found, inputs), m.labels, top_k, m.task, threshold)
    return respond(answer)
