"""Open Inference Protocol v2 (as Triton and KServe speak it): health, metadata and inference."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response

from service.errors import NotReady
from service.web import exchange
from service.web.api.common import infer_body, logits, model, plane, respond, response, routed

bp = Blueprint("v2", __name__, url_prefix="/v2")

SERVER: dict[str, Any] = {"name": "trainserve", "version": "0.1.0",
                          "extensions": ["classification", "binary_tensor_data"]}


@bp.get("")
def server_metadata() -> Response:
    """Server name, version and protocol extensions."""
    return respond(SERVER)


@bp.get("/health/live")
def live() -> Response:
    """The process answers."""
    return respond({"live": True})


@bp.get("/health/ready")
def ready() -> Response:
    """Every model can take requests."""
    if not plane().ready:
        raise NotReady("the server is not ready")
    return respond({"ready": True})


@bp.get("/models/<name>")
@bp.get("/models/<name>/versions/<version>")
def model_metadata(name: str, version: str | None = None) -> Response:
    """Inputs, outputs and versions of a model."""
    return respond(plane().metadata(model(name, version)))


@bp.get("/models/<name>/ready")
@bp.get("/models/<name>/versions/<version>/ready")
def model_ready(name: str, version: str | None = None) -> Response:
    """Whether a model version takes requests now (503 when it does not)."""
    found = model(name, version)
    if not plane().model_ready(found):
        raise NotReady(f"model {found.key} is not ready")
    return respond({"name": found.manifest.name, "version": found.manifest.version, "ready": True})


@bp.post("/models/<name>/infer")
@bp.post("/models/<name>/versions/<version>/infer")
def infer(name: str, version: str | None = None) -> Response:
    """One input tensor (images as FP32, UINT8 or another numeric type whose values fit; FP32 feature rows;
    JSON or binary), chosen outputs back."""
    found = routed(name, version)
    body = infer_body()
    exchange.check_named(body, found, version)
    inputs, threshold = exchange.infer_inputs(found, body)
    return response(exchange.infer_answer(found, body, logits(found, inputs), threshold))
