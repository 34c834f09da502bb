"""The web pages: the digit page (draw or upload, see what a served model thinks) and each model's page.

The pages are clients of the public API like any other: their scripts call /v1/models, ``:classify`` and
``/stats``. Everything they load comes from this service, never another host (the Content-Security-Policy
below holds the browser to that), so they work offline.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, render_template

from service.web.api.common import model, plane
from service.web.card import sections

bp = Blueprint("ui", __name__, root_path=str(Path(__file__).resolve().parents[1] / "ui"),
               template_folder="templates", static_folder="static", static_url_path="/ui/static")

CSP = ("default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; "
       "frame-ancestors 'none'; form-action 'none'")


@bp.get("/")
@bp.get("/ui/")
def index() -> str:
    """The digit page."""
    return render_template("index.html")


@bp.get("/ui/models/<name>")
@bp.get("/ui/models/<name>/<version>")
def model_page(name: str, version: str | None = None) -> str:
    """A model's page: its manifest in human form, the plots training wrote, live figures."""
    found = model(name, version)
    return render_template("model.html", m=found.manifest, device=found.device,
                           sections=sections(found.manifest), reports=plane().report_files(found))


@bp.after_request
def _same_origin_only(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
