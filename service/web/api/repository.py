"""Triton's model repository extension: ``POST /v2/repository/index`` lists every artifact in the
repository and its state; ``.../models/{name}/load`` and ``unload`` change what the runtimes serve under
model control "explicit" (409 otherwise). Off unless ``TRAINSERVE_MANAGEMENT_TOKEN`` is set; then every
request needs ``Authorization: Bearer <token>`` (401 without one, 403 with a wrong one). A load names a
model folder directly under the model directory: never a path."""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from pathlib import Path

import orjson
from flask import Blueprint, Response, request

from service.errors import Conflict, Forbidden, InvalidInput, ModelNotFound, Unauthorized
from service.runtime import protocol
from service.web.api.common import parse_json, plane
from service.web.triton import repository_index

# An artifact's name (service/manifest.py's rule): no separator, no "..", nothing but a folder's name.
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
# Loading verifies and warms up every version the policy selects: it may take far longer than inference.
_LOAD_SECONDS = 120.0

bp = Blueprint("repository", __name__, url_prefix="/v2/repository")


@bp.before_request
def _authorize() -> None:
    authorize()


def authorize() -> None:
    """The management token's check, for every route that changes what is served (or lists it all)."""
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
    body = _body()
    ready = body.get("ready", False)
    if not isinstance(ready, bool):
        raise InvalidInput("the body must be a JSON object whose optional 'ready' is true or false")
    index = repository_index(plane().config, plane().registry, ready)
    return Response(orjson.dumps(index), mimetype="application/json")


@bp.post("/models/<name>/load")
def load(name: str) -> Response:
    """Load (or reload) the versions of ``name`` the version policy selects, on every runtime."""
    parameters = _body().get("parameters") or {}
    if not isinstance(parameters, dict) or any(k == "config" or k.startswith("file:") for k in parameters):
        raise InvalidInput("a load takes no config override or files: the artifact's manifest is its config")
    return _control(name, protocol.LOAD)


@bp.post("/models/<name>/unload")
def unload(name: str) -> Response:
    """Stop serving every version of ``name`` (requests already sent to it finish first)."""
    _body()  # tritonclient sends {"parameters": {"unload_dependents": false}}: there are no dependents
    return _control(name, protocol.UNLOAD)


def model_folder(name: str) -> Path:
    """The folder of the model ``name`` directly under the model directory (ModelNotFound otherwise)."""
    folder = plane().config.model_dir / name
    if not _NAME.match(name) or folder.is_symlink() or not folder.is_dir():
        raise ModelNotFound(f"model {name[:100]!r} is not in the model repository")
    return folder


def _control(name: str, kind: int) -> Response:
    config = plane().config
    model_folder(name)
    if config.model_control != "explicit":
        raise Conflict(f"model control is {config.model_control!r}: set TRAINSERVE_MODEL_CONTROL=explicit to "
                       "load and unload through this API" +
                       (" (poll serves what the model folder holds, as the version policy says)"
                        if config.model_control == "poll" else ""))
    messages = plane().client.control(kind, name, time.monotonic() + max(_LOAD_SECONDS,
                                                                          config.request_timeout_s))
    action = "load" if kind == protocol.LOAD else "unload"
    return Response(orjson.dumps({"name": name, "action": action, "runtimes": messages}),
                    mimetype="application/json")


def _body() -> dict:
    raw = request.get_data(cache=False)
    body = parse_json(raw) if raw.strip() else {}
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object")
    return body
