"""A simple JSON API: list models, predict from pixel lists, classify uploaded images; each model's
manifest, the plots training wrote, and its live figures."""

from __future__ import annotations

from typing import Any

import numpy as np
from flask import Blueprint, Response, request, send_file

from service.runtime.client import ServedModel
from service.web.api.common import image_batch, json_body, logits, model, plane, respond
from service.web.inference import parse_tensor, predictions
from service.web.schemas import CLASSIFY_ARGS, PREDICT_REQUEST, load
from service.web.stats import summarize

bp = Blueprint("v1", __name__, url_prefix="/v1")

DATATYPE = {"float32": "FP32", "uint8": "UINT8"}


def describe(found: ServedModel, ready: bool) -> dict[str, Any]:
    """A model's summary for the listing."""
    m = found.manifest
    return {"name": m.name, "version": m.version, "architecture": m.architecture, "labels": list(m.labels),
            "input_shape": list(m.input.shape), "test_accuracy": m.metrics.get("test_accuracy"),
            "format": found.format, "ready": ready}


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
    """Labels and probabilities for images sent as pixel lists."""
    found = model(name, version)
    body = json_body(PREDICT_REQUEST)
    inputs = parse_tensor(body["instances"], DATATYPE[body["dtype"]], None, found.manifest.input)
    return _answer(found, inputs, body["top_k"])


@bp.post("/models/<name>:classify")
@bp.post("/models/<name>/versions/<version>:classify")
def classify(name: str, version: str | None = None) -> Response:
    """Labels and probabilities for uploaded PNG/JPEG images (raw body or multipart files)."""
    found = model(name, version)
    # No query string (the usual case) needs no validation: a schema load costs more than the decode.
    args = load(CLASSIFY_ARGS, request.args.to_dict()) if request.args else CLASSIFY_DEFAULTS
    inputs = image_batch(found)
    return _answer(found, inputs, args["top_k"], inputs if args["include_input"] else None)


CLASSIFY_DEFAULTS = {"top_k": None, "include_input": False}


def _answer(found: ServedModel, inputs: Any, top_k: int | None, shown: np.ndarray | None = None) -> Response:
    m = found.manifest
    answers = predictions(logits(found, inputs), m.labels, top_k)
    if shown is not None:  # what preprocessing made of each image, as the model got it
        for answer, example in zip(answers, shown, strict=True):
            answer["input"] = example
    return respond({"model": m.name, "version": m.version, "predictions": answers})


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
