"""The web pages: the digit page (draw or upload, see what a served model thinks) and each model's page.

The pages are clients of the public API like any other: their scripts call /v1/models, ``:classify`` and
``/stats``. Everything they load comes from this service, never another host (the Content-Security-Policy
below holds the browser to that), so they work offline.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, render_template, request

from service.errors import Conflict
from service.web import rollout
from service.web.api import routing
from service.web.api.common import model, plane, respond
from service.web.card import sections

bp = Blueprint("ui", __name__, root_path=str(Path(__file__).resolve().parents[1] / "ui"),
               template_folder="templates", static_folder="static", static_url_path="/ui/static")

CSP = ("default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; "
       "frame-ancestors 'none'; form-action 'none'")


@bp.get("/")
@bp.get("/ui/")
def index() -> str | Response:
    """The digit page; KServe's v1 liveness check (a client that does not ask for HTML) gets JSON."""
    if request.path == "/" and "text/html" not in request.headers.get("Accept", ""):
        return respond({"status": "alive"})
    return render_template("index.html")


@bp.get("/ui/models/<name>")
@bp.get("/ui/models/<name>/<version>")
def model_page(name: str, version: str | None = None) -> str:
    """A model's page: its manifest in human form, live figures, the rollout, the plots training wrote."""
    found = model(name, version)
    try:
        document = routing.document(name, plane().catalog)
    except Conflict:  # an unreadable routing file: the runtimes log it; the rest of the page stands
        view = None
    else:
        view = {"summary": rollout.summary(document), "rows": rollout.rows(document),
                "changes": rollout.changes(document)}
    return render_template("model.html", m=found.manifest, device=found.device, rollout=view,
                           sections=sections(found.manifest), reports=plane().report_files(found),
                           feedback=plane().config.feedback_dir is not None)


@bp.after_request
def _same_origin_only(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
