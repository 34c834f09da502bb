"""Rollouts: a model's routing state (``service/routing``) through the API.

``GET /v1/models/{name}/routing`` (public, as the model listing; the model page reads it) gives the state
as written, what requests get now, the history of changes and each served version's figures side by
side. The changes are management routes, behind the repository API's token: set the default, roll back to
the previous one, start, adjust or stop a canary, start or stop a shadow. Each writes the file (atomically,
under its lock), then has every runtime take it at once (a ROUTE command, answered once the runtime serves
the versions it names, so that every worker's next request sees it), and answers with the new document.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, request

from service.contract import routing_state, routing_store
from service.contract.routing_state import Budget, RoutingConflict, RoutingError, RoutingState
from service.errors import Conflict, InvalidInput, ModelNotFound
from service.handoff import protocol
from service.handoff.catalog import Catalog
from service.routing import split
from service.web.api.common import parse_json, plane, respond
from service.web.api.repository import authorize, model_folder
from service.web.figures import by_version

bp = Blueprint("routing", __name__)
_MANAGE = "/v2/repository/models/<name>/routing"
_HISTORY = 50  # the most recent changes the document shows (the file keeps more)
# A change that names a version not served yet answers once it is loaded, verified and warmed up.
_APPLY_SECONDS = 120.0


@bp.get("/v1/models/<name>/routing")
def show(name: str) -> Response:
    """The routing state of ``name``, what requests get now, the history and every version's figures."""
    catalog = plane().catalog
    catalog.get(name)  # 404 for a model that is not served
    return respond(document(name, catalog))


@bp.put(f"{_MANAGE}/default")
def set_default(name: str) -> Response:
    """Make a version the default (a canary or shadow of it ends: it is promoted)."""
    _manage(name)
    version = _fields({"version": str})["version"]
    _check_versions(name, [version])
    return _change(name, "set-default", lambda s: routing_state.set_default(s, version))


@bp.post(f"{_MANAGE}/rollback")
def rollback(name: str) -> Response:
    """Go back to the default before the current one."""
    _manage(name)
    return _change(name, "rollback", routing_state.rollback)


@bp.put(f"{_MANAGE}/canary")
def start_canary(name: str) -> Response:
    """Start a canary ({"version", "percent", "budget"}), or change the running one's percent and budget."""
    _manage(name)
    body = _fields({"version": str, "percent": (int, float), "budget": dict}, optional=("budget",))
    version, percent = body["version"], body["percent"]
    try:
        budget = Budget(**body["budget"]) if "budget" in body else None
    except TypeError:
        raise InvalidInput("budget takes max_error_rate, max_disagreement and min_requests") from None
    except RoutingError as exc:
        raise InvalidInput(str(exc)) from None
    _check_versions(name, [version])
    current = _current(name, version)
    return _change(name, "canary", lambda s: routing_state.start_canary(s, version, percent, budget, current))


@bp.delete(f"{_MANAGE}/canary")
def stop_canary(name: str) -> Response:
    """Stop the canary."""
    _manage(name)
    return _change(name, "stop-canary", routing_state.stop_canary)


@bp.put(f"{_MANAGE}/shadow")
def start_shadow(name: str) -> Response:
    """Start a shadow ({"version", "percent"}), or change its percent."""
    _manage(name)
    body = _fields({"version": str, "percent": (int, float)})
    version, percent = body["version"], body["percent"]
    _check_versions(name, [version])
    current = _current(name, version)
    return _change(name, "shadow", lambda s: routing_state.start_shadow(s, version, percent, current))


@bp.delete(f"{_MANAGE}/shadow")
def stop_shadow(name: str) -> Response:
    """Stop the shadow."""
    _manage(name)
    return _change(name, "stop-shadow", routing_state.stop_shadow)


def _manage(name: str) -> None:
    """The token, then a model folder of that name."""
    authorize()
    model_folder(name)


def _check_versions(name: str, versions: list[str]) -> None:
    """Versions a change names must be in the repository (and served, under model control "none")."""
    config = plane().config
    on_disk = routing_store.versions_on_disk(config.model_dir, name)
    for version in versions:
        if version not in on_disk:
            raise ModelNotFound(f"model {name!r} has no version {version[:20]!r} in the repository (it has "
                                f"{', '.join(on_disk) or 'none'})")
        if config.model_control == "none" and not plane().catalog.serves(f"{name}/{version}"):
            raise Conflict(f"model control is 'none': only versions served now can be routed to, and "
                           f"{name}/{version} is not (TRAINSERVE_MODEL_CONTROL)")


def _change(name: str, action: str, step: Callable[[RoutingState], RoutingState]) -> Response:
    """Write the file, have every runtime take it, answer with the document."""
    config = plane().config
    try:
        routing_store.change(config.model_dir, name, step, action, by="api")
    except RoutingError as exc:
        raise InvalidInput(str(exc)) from None
    except RoutingConflict as exc:
        raise Conflict(str(exc)) from None
    except routing_store.StoreError as exc:
        raise Conflict(f"{exc}: the routing state lives in the model repository, which must be writable "
                       "here (or change it with python -m service.routing where it is)") from None
    runtimes = plane().client.control(protocol.ROUTE, name,
                                      time.monotonic() + max(_APPLY_SECONDS, config.request_timeout_s))
    return respond(document(name, plane().catalog) | {"runtimes": runtimes})


def _fields(wanted: dict[str, type | tuple[type, ...]], optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """The JSON body: an object of exactly these fields (``optional`` may be left out), each of its type."""
    body = parse_json(request.get_data(cache=False))
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object")
    unknown = sorted(set(body) - set(wanted))
    if unknown:
        raise InvalidInput(f"unknown field(s) {', '.join(map(repr, unknown))[:200]}: this route takes "
                           f"{', '.join(wanted)}")
    for field, kind in wanted.items():
        if field not in body:
            if field in optional:
                continue
            raise InvalidInput(f"the body needs {field!r}")
        if isinstance(body[field], bool) or not isinstance(body[field], kind):
            raise InvalidInput(f"{field!r} must be {_KINDS[field]}")
    try:  # the values' own rules, before anything is looked up
        if "version" in body:
            routing_state.check_version(body["version"])
        if "percent" in body:
            routing_state.check_percent(body["percent"])
    except RoutingError as exc:
        raise InvalidInput(str(exc)) from None
    return body


_KINDS = {"version": 'a string such as "2"', "percent": "a number", "budget": "a JSON object"}


def _current(name: str, candidate: str) -> str:
    """The version a bare name gets now, pinned as the default when none is; when that is the candidate
    itself (just published, so the newest), the newest other version in the repository (served, under
    model control "none"): the routing loads it."""
    catalog, config = plane().catalog, plane().config
    served = catalog.models.get(name, {})
    if served and (default := catalog.default_version(name)) != candidate:
        return default
    versions = list(served) if config.model_control == "none" else \
        routing_store.versions_on_disk(config.model_dir, name)
    try:
        return routing_store.newest_other(versions, name, candidate)
    except RoutingConflict as exc:
        raise Conflict(f"{exc}: there is no default to compare it with") from None


def document(name: str, catalog: Catalog) -> dict[str, Any]:
    try:
        written, history = routing_store.read(plane().config.model_dir, name)
    except (RoutingError, OSError) as exc:
        raise Conflict(f"the routing state of {name!r} cannot be read: {exc}") from None
    served = sorted(catalog.models.get(name, {}), key=int)
    return {"name": name, "state": written.to_dict(),
            "effective": split.effective(catalog, name) if served else None,
            "served": served, "history": history[-_HISTORY:],
            "versions": by_version(plane().metrics.families(), name, served)}
