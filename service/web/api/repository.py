"""Triton's model repository extension, read-only for now: ``POST /v2/repository/index`` lists every
artifact in the repository and its state; ``load`` and ``unload`` answer 501 until the runtime can swap
models (model control "none": every version is loaded at start). Off unless
``TRAINSERVE_MANAGEMENT_TOKEN`` is set; then every request needs ``Authorization: Bearer <token>`` (401
without one, 403 with a wrong one)."""

from __future__ import annotations

import hashlib
import hmac

import orjson
from flask import Blueprint, Response, request

from service.errors import Forbidden, InvalidInput, ModelNotFound, NotSupported, Unauthorized
from service.web.api.common import plane
from service.web.triton import repository_index

bp = Blueprint("repository", __name__, url_prefix="/v2/repository")


@bp.before_request
def _authorize() -> None:
    token = plane().config.management_token
    if not token:
        raise Forbidden("the model repository API is off: the operator turns it on by setting "
                        "TRAINSERVE_MANAGEMENT_TOKEN")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise Unauthorized("the model repository API needs an Authorization: Bearer <token> header")
    # Digests of equal length, compared in constant time: neither the token nor its length leaks.
    if not hmac.compare_digest(_digest(given.strip()), _digest(token)):
        raise Forbidden("the bearer token is not the one this service accepts")


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@bp.post("/index")
def index() -> Response:
    """Every model version in the repository: READY when served, UNAVAILABLE (with why) when not."""
    raw = request.get_data(cache=False)
    try:
        body = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"malformed JSON: {exc}") from None
    ready = body.get("ready", False) if isinstance(body, dict) else None
    if not isinstance(ready, bool):
        raise InvalidInput("the body must be a JSON object whose optional 'ready' is true or false")
    index = repository_index(plane().config.model_dir, plane().registry, ready)
    return Response(orjson.dumps(index), mimetype="application/json")


@bp.post("/models/<name>/load")
@bp.post("/models/<name>/unload")
def control(name: str) -> Response:
    """Not yet: the runtime loads every version at start (model control "none")."""
    if name not in {e["name"] for e in repository_index(plane().config.model_dir, plane().registry, False)}:
        raise ModelNotFound(f"model {name[:100]!r} is not in the model repository")
    action = request.path.rsplit("/", 1)[1]
    raise NotSupported(f"cannot {action} {name!r}: model control is 'none' (every version in the "
                       "repository is loaded at start); restart the service to change what it serves")
