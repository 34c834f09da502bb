"""A simple JSON API: list models, predict from pixel lists, classify uploaded images; each model's
manifest, the plots training wrote, and its live figures."""

from __future__ import annotations

from typing import Any

import numpy as np
from flask import Blueprint, Response, request, send_file

from service.runtime.catalog import ServedModel
from service.web import confidence
from service.web.api.common import image_batch, json_body, logits, model, plane, respond
from service.web.confidence import annotate, calibrated, judge
from service.web.inference import parse_features, parse_tensor, predictions, threshold_for
from service.web.schemas import CLASSIFY_ARGS, PREDICT_REQUEST, load
from service.web.stats import summarize

bp = Blueprint("v1", __name__, url_prefix="/v1")

DATATYPE = {"float32": "FP32", "uint8": "UINT8"}


def describe(found: ServedModel, ready: bool) -> dict[str, Any]:
    """A model's summary for the listing."""
    m = found.manifest
    summary = {"name": m.name, "version": m.version, "architecture": m.architecture, "task": m.task,
               "labels": list(m.labels), "input_shape": list(m.input.shape), "input_kind": m.input.kind,
               "test_accuracy": m.metrics.get("test_accuracy"), "format": found.format, "ready": ready}
    if m.input.kind == "features":
        summary["features"] = list(m.input.features)
    if m.task != "multiclass":
        summary["threshold"] = m.threshold
    return summary | confidence.describe(m)


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
    return _answer(found, inputs, body["top_k"], body["threshold"], plain=body["plain"])


@bp.post("/models/<name>:classify")
@bp.post("/models/<name>/versions/<version>:classify")
def classify(name: str, version: str | None = None) -> Response:
    """Labels and probabilities for uploaded PNG/JPEG images (raw body or multipart files)."""
    found = model(name, version)
    # No query string (the usual case) needs no validation: a schema load costs more than the decode.
    args = load(CLASSIFY_ARGS, request.args.to_dict()) if request.args else CLASSIFY_DEFAULTS
    inputs = image_batch(found)
    return _answer(found, inputs, args["top_k"], shown=inputs if args["include_input"] else None,
                   plain=args["plain"])


CLASSIFY_DEFAULTS = {"top_k": None, "include_input": False, "plain": False}


def _answer(found: ServedModel, inputs: Any, top_k: int | None, threshold: float | None = None,
            shown: np.ndarray | None = None, plain: bool = False) -> Response:
    m = found.manifest
    threshold = threshold_for(m, threshold)
    answer: dict[str, Any] = {"model": m.name, "version": m.version, "task": m.task}
    if m.task != "multiclass":
        answer["threshold"] = threshold
    scaled = calibrated(logits(found, inputs), m)
    answered = predictions(scaled, m.labels, top_k, m.task, threshold)
    answer["predictions"] = annotate(answered, judge(scaled, m), plain)
    if shown is not None:  # what preprocessing made of each image, as the model got it
        for prediction, example in zip(answer["predictions"], shown, strict=True):
            prediction["input"] = example
    return respond(answer)


@bp.get("/models/<name>/manifest")
@bp.get("/models/<name>/versions/<version>/manifest")
def manifest(name: str, version: str | None = None) -> Response:
    """The model's manifest, as training wrote it (models/README.md describes every field)."""
    found = model(name, version)
    return respond(found.manifest.to_dict() | {"reports": plane().report_files(found)})


@bp.get("/models/<name>/versions/<version>/files/<file>")
def report_file(name: str, version: str, file: str) -> Response:
    """A plot training wrote into the artifact (a PNG beside the model: curves.png, confusion.png...)."""
    path = plane().report_file(model(name, version), file)
    return send_file(path, mimetype="image/png", max_age=3600)  # an artifact version never changes


@bp.get("/models/<name>/stats")
@bp.get("/models/<name>/versions/<version>/stats")
def stats(name: str, version: str | None = None) -> Response:
    """Live figures from the service's metrics: requests, latency percentiles, batch sizes."""
    found = model(name, version)
    return respond(summarize(plane().metrics.families(), found.manifest.name, found.manifest.version))
