"""A simple JSON API: list models, predict from pixel lists, classify uploaded images; each model's
manifest, the plots training wrote, and its live figures."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, request, send_file

from service.handoff.catalog import ServedModel
from service.web import confidence, exchange
from service.web.api.common import image_batch, json_limit, logits, model, plane, respond, response, routed
from service.web.figures import summarize
from service.web.schemas import CLASSIFY_ARGS, load

bp = Blueprint("v1", __name__, url_prefix="/v1")


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
    served = plane().catalog
    ready = plane().ready  # one ping of every runtime for the whole listing, not one per model
    return respond({"models": [describe(m, ready) | {"default": m is served.get(m.manifest.name)}
                               for m in served]})


@bp.post("/models/<name>:predict")
@bp.post("/models/<name>/versions/<version>:predict")
def predict(name: str, version: str | None = None) -> Response:
    """Labels and probabilities for images sent as pixel lists, or for rows of named features."""
    found = routed(name, version)
    body = exchange.predict_request(request.mimetype, request.get_data(cache=False), json_limit())
    inputs = exchange.predict_inputs(found, body)
    answer = exchange.predictions_answer(found, logits(found, inputs), body["top_k"], body["threshold"],
                                         plain=body["plain"])
    return response(answer)


@bp.post("/models/<name>:classify")
@bp.post("/models/<name>/versions/<version>:classify")
def classify(name: str, version: str | None = None) -> Response:
    """Labels and probabilities for uploaded PNG/JPEG images (raw body or multipart files)."""
    found = routed(name, version)
    # No query string (the usual case) needs no validation: a schema load costs more than the decode.
    args = load(CLASSIFY_ARGS, request.args.to_dict()) if request.args else exchange.CLASSIFY_DEFAULTS
    inputs = image_batch(found)
    shown = inputs if args["include_input"] else None
    answer = exchange.predictions_answer(found, logits(found, inputs), args["top_k"], shown=shown,
                                         plain=args["plain"])
    return response(answer)


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
