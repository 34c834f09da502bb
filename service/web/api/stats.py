"""Triton's statistics and model configuration extensions: ``/v2/models/stats``, ``.../{name}/stats``
and ``.../{name}/config``, as ``tritonclient``'s ``get_inference_statistics`` and ``get_model_config``
read them."""

from __future__ import annotations

from flask import Blueprint, Response

from service.web.api.common import model, plane, respond
from service.web.triton import model_config, statistics

bp = Blueprint("stats", __name__, url_prefix="/v2/models")


@bp.get("/stats")
def all_stats() -> Response:
    """Statistics of every served model version."""
    return respond(statistics(plane().metrics.families(), plane().catalog))


@bp.get("/<name>/stats")
@bp.get("/<name>/versions/<version>/stats")
def model_stats(name: str, version: str | None = None) -> Response:
    """Statistics of one model: every version of it, or the one named."""
    found = model(name, version)
    served = ([found] if version is not None
              else [m for m in plane().catalog if m.manifest.name == found.manifest.name])
    return respond(statistics(plane().metrics.families(), served))


@bp.get("/<name>/config")
@bp.get("/<name>/versions/<version>/config")
def config(name: str, version: str | None = None) -> Response:
    """Batch size, inputs, outputs, batching and queue settings, in Triton's model configuration form."""
    found = model(name, version)
    return respond(model_config(found, plane().catalog, plane().config))
