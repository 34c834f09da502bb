"""The gRPC door's one mapping (service/grpc/status.py): every typed error's status code, and the request
id and retry hint it sends as trailing metadata."""

from __future__ import annotations

import grpc
import pytest

from service import errors
from service.grpc import status

EXPECTED = {
    errors.InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    errors.UnsupportedMediaType: grpc.StatusCode.INVALID_ARGUMENT,
    errors.Unauthorized: grpc.StatusCode.UNAUTHENTICATED,
    errors.Forbidden: grpc.StatusCode.PERMISSION_DENIED,
    errors.ModelNotFound: grpc.StatusCode.NOT_FOUND,
    errors.PayloadTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.QueueFull: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.NotReady: grpc.StatusCode.UNAVAILABLE,
    errors.RuntimeUnavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.RequestTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Conflict: grpc.StatusCode.FAILED_PRECONDITION,
    errors.NotSupported: grpc.StatusCode.UNIMPLEMENTED,
    errors.InferenceFailed: grpc.StatusCode.INTERNAL,
}


@pytest.mark.parametrize(("error", "code"), EXPECTED.items(), ids=lambda x: getattr(x, "__name__", str(x)))
def test_each_typed_error_has_its_status_code(error, code):
    assert status.code_for(error("why").status) == code


def test_every_http_status_a_typed_error_carries_is_mapped():
    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    unmapped = {e.__name__ for e in subclasses(errors.ServiceError) if e.status not in status.CODES}
    assert not unmapped


def test_the_trailers_carry_the_request_id_and_the_retry_hint():
    assert status.trailers("abc") == (("x-request-id", "abc"),)
    assert status.trailers("abc", errors.InvalidInput("bad")) == (("x-request-id", "abc"),)
    full = status.trailers("abc", errors.QueueFull("full", retry_after_s=2))
    assert full == (("x-request-id", "abc"), ("retry-after", "2"))
    assert dict(status.trailers("d", errors.RuntimeUnavailable("restarting")))["retry-after"] == "1"
