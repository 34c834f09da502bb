"""Corrections: ``POST /v1/models/{name}[/versions/{v}]/feedback`` stores an input with its true label where
training reads it (service/web/corrections.py; docs/serving.md#corrections)."""

from __future__ import annotations

import numpy as np
from flask import Blueprint, Response, current_app, g, request

from service.errors import Conflict, InvalidInput
from service.web import exchange, management
from service.web.api.common import image_batch, json_limit, logits, model, plane, respond
from service.web.corrections import FeedbackStore
from service.web.explaining import scored_labels
from service.web.schemas import FEEDBACK_ARGS, FEEDBACK_REQUEST, load

bp = Blueprint("feedback", __name__, url_prefix="/v1")


@bp.post("/models/<name>/feedback")
@bp.post("/models/<name>/versions/<version>/feedback")
def feedback(name: str, version: str | None = None) -> Response:
    """Store each input with its true label; the answer says what the model predicted and whether the
    input was already stored. Without a version: the model's default version."""
    found = model(name, version)
    config = current_app.config["TRAINSERVE"]
    if config.feedback_dir is None:
        raise Conflict("feedback is off: set TRAINSERVE_FEEDBACK_DIR to a folder to store corrections")
    table = found.manifest.input.kind == "features"
    if config.feedback_token:
        management.check_bearer(config.feedback_token, request.headers.get("Authorization", ""),
                                "storing a correction (TRAINSERVE_FEEDBACK_TOKEN is set)")
    if not table and (request.mimetype == "multipart/form-data"
                      or request.mimetype.startswith(exchange.IMAGE_TYPES)):
        args, inputs = load(FEEDBACK_ARGS, request.args.to_dict()), image_batch(found)
    else:
        args = exchange.json_request(FEEDBACK_REQUEST, request.mimetype, request.get_data(cache=False),
                                     json_limit())
        args["dtype"] = args["dtype"] or ("float32" if table else "uint8")
        inputs = exchange.predict_inputs(found, args)
    labels = scored_labels(found)
    if args["label"] not in labels or found.manifest.task != "multiclass":
        raise InvalidInput(f"label {args['label']!r} is not a label of model {found.key} "
                           f"({', '.join(labels)}; multi-class models only)")
    predicted = [labels[i] for i in np.argmax(logits(found, inputs), axis=1)]
    store = FeedbackStore(config.feedback_dir, config.feedback_max_items, config.feedback_per_minute)
    request_id = args["request_id"] or g.get("request_id", "")
    m = found.manifest
    stored = [store.add_row(m.name, m.version, args["label"], guess, row, m.input.features, request_id)
              if table else store.add(m.name, m.version, args["label"], guess, row, request_id)
              for guess, row in zip(predicted, inputs, strict=True)]
    counter = plane().metrics.corrections
    for item in stored:
        if not item.duplicate:
            counter.labels(found.manifest.name, found.manifest.version, item.predicted, item.label).inc()
    return respond({"model": found.manifest.name, "version": found.manifest.version,
                    "stored": [vars(item) for item in stored]})
