"""Typed service errors (standard library only: the model runtime raises them too).

Lower layers (schemas, inference, batching, the registry, the runtime client) raise a
:class:`ServiceError` subclass that names its HTTP status; they never build responses:
``service/web/error_handlers.py`` turns them into ``{"error": "<message>"}``.
"""

from __future__ import annotations


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


class Unauthorized(ServiceError):
    """A management request without a bearer token."""

    status = 401

    def headers(self) -> dict[str, str]:
        """Say which scheme is expected (RFC 6750)."""
        return {"WWW-Authenticate": 'Bearer realm="trainserve"'}


class Forbidden(ServiceError):
    """A wrong token, management turned off, or a CORS preflight from an origin that is not allowed."""

    status = 403


class ModelNotFound(ServiceError):
    """No such model or version."""

    status = 404


class ArtifactFileNotFound(ServiceError):
    """The model's artifact has no such file, or not one the service hands out."""

    status = 404


class PayloadTooLarge(ServiceError):
    """The request body is over TRAINSERVE_MAX_REQUEST_BYTES."""

    status = 413


class HeadersTooLarge(ServiceError):
    """The request's header fields are over the service's limit (service/web/limits.py)."""

    status = 431


class RequestTimeout(ServiceError):
    """The client did not send its whole body within the request's deadline (a stalled upload). The
    front end closes the connection, whose body was not read to its end (an app may not set hop-by-hop
    headers such as Connection, PEP 3333)."""

    status = 408


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


class RuntimeUnavailable(NotReady):
    """The model runtime cannot be reached (restarting after a crash, or not started)."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        """Tell the client when to come back."""
        return {"Retry-After": str(self.retry_after_s)}


class Conflict(ServiceError):
    """The request cannot be done in the service's configured state (load and unload outside model control
    "explicit")."""

    status = 409


class NotSupported(ServiceError):
    """A protocol route this service knows but does not implement."""

    status = 501


class DeadlineExceeded(ServiceError):
    """The request's deadline passed before its result was ready."""

    status = 504


class InferenceFailed(ServiceError):
    """The forward pass raised or returned something unusable; every request in the batch gets this."""

    status = 500
