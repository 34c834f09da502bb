"""The one place that turns any error into a JSON response ``{"error": "<message>"}``."""

from __future__ import annotations

import logging

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from service.errors import ServiceError
from service.web.exchange import error_body

log = logging.getLogger(__name__)


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """The JSON body every error shares."""
    response = Response(error_body(message), status=status, content_type="application/json")
    response.headers.update(headers or {})
    return response


def log_error(exc: ServiceError) -> None:
    """Every door's log line for an error it answers."""
    # 500s are failures to look at; 503/504 are expected under overload or during a drain.
    level = logging.WARNING if exc.status == 500 else logging.DEBUG
    log.log(level, "%s: %s", type(exc).__name__, exc.message)


def log_unexpected() -> None:
    """Every door's log line, with the traceback, for an exception no ServiceError stands for."""
    log.exception("unhandled error")


def register_error_handlers(app: Flask) -> None:
    """Map ServiceError, werkzeug's HTTP errors and anything unexpected to JSON responses."""

    @app.errorhandler(ServiceError)
    def service_error(exc: ServiceError) -> Response:
        log_error(exc)
        return error_response(exc.status, exc.message, exc.headers())

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        # Unknown routes (404), wrong methods (405) and werkzeug's own 413 for oversized bodies.
        headers = {}
        if isinstance(exc, MethodNotAllowed):  # the methods in a fixed order (werkzeug's come from a set)
            headers["Allow"] = ", ".join(sorted(exc.valid_methods or []))
        return error_response(exc.code or 500, _message(exc), headers)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log_unexpected()
        return error_response(500, "internal server error")


def _message(exc: HTTPException) -> str:
    # werkzeug's descriptions are written for a browser ("If you entered the URL manually..."): an API
    # client is told what was asked and where the routes are described.
    path = request.path[:200]
    if exc.code == 404:
        return f"no route {request.method} {path}: the API is described at /docs"
    if isinstance(exc, MethodNotAllowed):
        allowed = ", ".join(sorted(m for m in (exc.valid_methods or []) if m not in ("HEAD", "OPTIONS")))
        return f"{request.method} is not allowed on {path} (allowed: {allowed or 'none'})"
    return exc.description or exc.name
