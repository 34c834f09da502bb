"""The routes of KServe's v1 protocol that its ``InferenceRESTClient`` calls beyond ``:predict``: model
readiness and ``:explain`` (attributions computed in the model runtime; docs/serving.md#explanations)."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, g, request

from service.web import exchange, explaining
from service.web.api.common import image_batch, json_limit, model, plane, respond, response
from service.web.schemas import EXPLAIN_ARGS, EXPLAIN_REQUEST, load

bp = Blueprint("kserve", __name__, url_prefix="/v1")


@bp.get("/models/<name>")
def model_ready(name: str) -> Response:
    """KServe v1 model status: ``{"name", "ready"}``; 503 while the service is not ready."""
    found = model(name)
    ready = plane().model_ready(found)
    return respond({"name": found.manifest.name, "ready": ready}, 200 if ready else 503)


@bp.post("/models/<name>:explain")
@bp.post("/models/<name>/versions/<version>:explain")
def explain(name: str, version: str | None = None) -> Response:
    """Predictions and per-pixel (per-feature) attributions: a v1 JSON body, or images as for :classify."""
    found = model(name, version)
    if request.mimetype == "multipart/form-data" or request.mimetype.startswith(exchange.IMAGE_TYPES):
        args = load(EXPLAIN_ARGS, request.args.to_dict())
        args["targets"] = [t.strip() for t in args["targets"].split(",") if t.strip()]
        inputs = image_batch(found)
    else:
        args = exchange.json_request(EXPLAIN_REQUEST, request.mimetype, request.get_data(cache=False),
                                     json_limit())
        inputs = exchange.predict_inputs(found, args)
    ask = explaining.plan(found, inputs, args["targets"], args["method"], args["steps"],
                          current_app.config["TRAINSERVE"])
    attributions, logits = plane().explain(found, ask, g.arrived)
    return response(explaining.explain_answer(found, ask, attributions, logits, args["plain"]))
