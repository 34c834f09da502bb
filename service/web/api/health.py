"""Kubernetes probes and the Prometheus scrape."""

from __future__ import annotations

from flask import Blueprint, Response

from service.errors import NotReady
from service.metrics import CONTENT_TYPE
from service.web.api.common import plane, respond

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """Liveness: the worker answers (restart it if not)."""
    return respond({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    """Readiness: models loaded and warmed up, batchers running, not draining (503 otherwise)."""
    if not plane().ready:
        raise NotReady("not ready: starting or draining")
    return respond({"status": "ready", "models": [m.key for m in plane().catalog]})


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus text format, summed over every gunicorn worker."""
    return Response(plane().metrics.render(), mimetype=None, content_type=CONTENT_TYPE)
