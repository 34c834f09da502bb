"""The typed errors (``service/errors.py``, each with its HTTP status) as gRPC status codes: the one mapping
of the gRPC door, as ``web/error_handlers.py`` is the HTTP door's. The message is the same text; a retry hint
(``Retry-After`` over HTTP) travels as trailing metadata, beside the request id."""

from __future__ import annotations

import grpc

from service.errors import ServiceError

CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,  # a size limit
    415: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,  # the model's queue is full
    431: grpc.StatusCode.RESOURCE_EXHAUSTED,
    500: grpc.StatusCode.INTERNAL,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,  # not ready, draining, the runtime restarting
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
REQUEST_ID = "x-request-id"
RETRY_AFTER = "retry-after"  # seconds, as the HTTP header says it


def code_for(status: int) -> grpc.StatusCode:
    """The gRPC code of an HTTP status."""
    return CODES.get(status, grpc.StatusCode.UNKNOWN)


def trailers(request_id: str, exc: ServiceError | None = None) -> tuple[tuple[str, str], ...]:
    """The trailing metadata of an answer: its request id, and the retry hint an error carries."""
    retry = exc.headers().get("Retry-After") if exc is not None else None
    return ((REQUEST_ID, request_id), (RETRY_AFTER, retry)) if retry else ((REQUEST_ID, request_id),)
