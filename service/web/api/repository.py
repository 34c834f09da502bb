"""Triton's model repository extension: ``POST /v2/repository/index`` lists every artifact in the
repository and its state; ``.../models/{name}/load`` and ``unload`` change what the runtimes serve under
model control "explicit" (409 otherwise). Off unless ``TRAINSERVE_MANAGEMENT_TOKEN`` is set; then every
request needs ``Authorization: Bearer <token>`` (401 without one, 403 with a wrong one). A load names a
model folder directly under the model directory: never a path."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
from flask import Blueprint, Response, request

from service.errors import InvalidInput
from service.handoff import protocol
from service.web import management
from service.web.api.common import parse_json, plane
from service.web.triton import repository_index

bp = Blueprint("repository", __name__, url_prefix="/v2/repository")


@bp.before_request
def _authorize() -> None:
    authorize()


def authorize() -> None:
    """The management token's check, for every route that changes what is served (or lists it all)."""
    management.authorize(plane().config.management_token, request.headers.get("Authorization", ""))


def model_folder(name: str) -> Path:
    """The folder of the model ``name`` directly under the model directory (ModelNotFound otherwise)."""
    return management.model_folder(plane().config, name)


@bp.post("/index")
def index() -> Response:
    """Every model version in the repository: READY when served, UNAVAILABLE (with why) when not."""
    body = _body()
    ready = body.get("ready", False)
    if not isinstance(ready, bool):
        raise InvalidInput("the body must be a JSON object whose optional 'ready' is true or false")
    index = repository_index(plane().config, plane().catalog, ready)
    return Response(orjson.dumps(index), mimetype="application/json")


@bp.post("/models/<name>/load")
def load(name: str) -> Response:
    """Load (or reload) the versions of ``name`` the version policy selects, on every runtime."""
    parameters = _body().get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInput("a load takes no config override or files: the artifact's manifest is its config")
    management.check_load_parameters(parameters)
    return _control(name, protocol.LOAD)


@bp.post("/models/<name>/unload")
def unload(name: str) -> Response:
    """Stop serving every version of ``name`` (requests already sent to it finish first)."""
    _body()  # tritonclient sends {"parameters": {"unload_dependents": false}}: there are no dependents
    return _control(name, protocol.UNLOAD)


def _control(name: str, kind: int) -> Response:
    config = plane().config
    management.check_control(config, name)
    messages = plane().client.control(kind, name, time.monotonic() + max(management.LOAD_SECONDS,
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
