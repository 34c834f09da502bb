"""The routes of KServe's v1 protocol that its ``InferenceRESTClient`` calls beyond ``:predict``: model
readiness and ``:explain`` (501: the service serves no explainer)."""

from __future__ import annotations

from flask import Blueprint, Response

from service.errors import NotSupported
from service.web.api.common import model, plane, respond

bp = Blueprint("kserve", __name__, url_prefix="/v1")


@bp.get("/models/<name>")
def model_ready(name: str) -> Response:
    """KServe v1 model status: ``{"name", "ready"}``; 503 while the service is not ready."""
    found = model(name)
    ready = plane().model_ready(found)
    return respond({"name": found.manifest.name, "ready": ready}, 200 if ready else 503)


@bp.post("/models/<name>:explain")
def explain(name: str) -> Response:
    """No explainer is served: a clear 501 rather than a 404."""
    found = model(name)
    raise NotSupported(f"model {found.key} has no explainer: use :predict")
