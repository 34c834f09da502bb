"""Typed service errors and the one place that turns any error into a JSON response.

Lower layers (schemas, inference, the batcher, the registry) raise a :class:`ServiceError` subclass that
names its HTTP status; they never build responses. Every response body for an error is
``{"error": "<message>"}``.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """An error a client should see, with its HTTP status."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def headers(self) -> dict[str, str]:
        """Extra response headers for this error."""
        return {}


class InvalidInput(ServiceError):
    """Malformed JSON, wrong shape or dtype, NaN or out-of-range values, an undecodable image."""

    status = 400


class ModelNotFound(ServiceError):
    """No such model or version."""

    status = 404


class PayloadTooLarge(ServiceError):
    """The request body is over TRAINSERVE_MAX_REQUEST_BYTES."""

    status = 413


class UnsupportedMediaType(ServiceError):
    """The body's content type is not one this endpoint reads."""

    status = 415


class QueueFull(ServiceError):
    """The model's queue is full; the client should retry shortly."""

    status = 429

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        """Tell the client when to come back."""
        return {"Retry-After": str(self.retry_after_s)}


class NotReady(ServiceError):
    """The service or model is not ready (starting, draining after SIGTERM, or stopped)."""

    status = 503


class DeadlineExceeded(ServiceError):
    """The request's deadline passed before its result was ready."""

    status = 504


class InferenceFailed(ServiceError):
    """The forward pass raised or returned something unusable; every request in the batch gets this."""

    status = 500


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """The JSON body every error shares."""
    response = jsonify(error=message)
    response.status_code = status
    response.headers.update(headers or {})
    return response


def register_error_handlers(app: Flask) -> None:
    """Map ServiceError, werkzeug's HTTP errors and anything unexpected to JSON responses."""

    @app.errorhandler(ServiceError)
    def service_error(exc: ServiceError) -> Response:
        # 500s are failures to look at; 503/504 are expected under overload or during a drain.
        log.log(logging.WARNING if exc.status == 500 else logging.DEBUG, "%s: %s", type(exc).__name__,
                exc.message)
        return error_response(exc.status, exc.message, exc.headers())

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        # Unknown routes (404), wrong methods (405) and werkzeug's own 413 for oversized bodies.
        headers = dict(exc.get_headers()) if exc.code == 405 else {}
        headers.pop("Content-Type", None)
        return error_response(exc.code or 500, exc.description or exc.name, headers)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(500, "internal server error")
