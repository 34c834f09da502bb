"""Property-based fuzzing of the whole HTTP API from the OpenAPI document it serves (schemathesis).

Every operation gets requests generated from the document (positive: what the document allows) and,
where it has parameters or a body, requests that break it (negative); the real app, over a real model
runtime, answers each one. Checks: no 5xx, a documented status, the documented content type, the
documented body and headers. Fixed seed and bounded examples: the same requests on every run.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings

from service.web.openapi import ROUTES

schemathesis = pytest.importorskip("schemathesis", reason="pip install schemathesis (the e2e extra)")
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)


def not_a_server_error_but_a_documented_501(ctx, response, case):
    """No 5xx, except a 501 the operation documents: a feature this service does not offer (explain)."""
    if response.status_code == 501 and "501" in case.operation.definition.raw.get("responses", {}):
        return None
    return not_a_server_error(ctx, response, case)


CHECKS = [not_a_server_error_but_a_documented_501, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance]
# schemathesis sends requests' default Accept-Encoding (gzip) and its WSGI transport, unlike an HTTP client,
# does not decode the answer: the bodies are checked uncoded (web/test_api_extensions.py checks the coding).
# The management token is sent too, so that the repository routes answer past it.
TOKEN = "fuzz-management-token"
HEADERS = {"Accept-Encoding": "identity", "Authorization": f"Bearer {TOKEN}"}
# Per operation and mode; TRAINSERVE_FUZZ_SCALE=20 for a longer hunt (the same seed, more cases).
EXAMPLES = 20 * int(os.environ.get("TRAINSERVE_FUZZ_SCALE", "1"))
# Operations with neither parameters nor a body: there is nothing to break, so no negative cases. Two
# catalogs: the image classifiers (every operation), and the binary, multi-label and tabular models
# (the operations that name a model, whose document depends on them).
CASES = [pytest.param(catalog, path, method, mode, id=f"{catalog} {method.upper()} {path} {mode.value}")
         for catalog in ("images", "tasks")
         for path, method, _, body, *_ in ROUTES
         for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
         if (mode is GenerationMode.POSITIVE or body or "{" in path)
         and (catalog == "images" or "{name}" in path)]


@pytest.fixture
def api_schema(request, make_app, task_root):
    """The document the app serves, loaded by schemathesis, with the app itself as the transport (WSGI)."""
    app = make_app(model_dir=task_root["root"], management_token=TOKEN) if request.param == "tasks" \
        else make_app(management_token=TOKEN)
    app.wsgi_app = _closing(app.wsgi_app)
    return schemathesis.openapi.from_wsgi("/openapi.json", app)


def _closing(wsgi_app):
    """Read and close every response body, as a real server does (PEP 3333): schemathesis' WSGI transport
    reads it without closing it, which would leave a plot's file (send_file) open."""
    def app(environ, start_response):
        body = wsgi_app(environ, start_response)
        try:
            return [b"".join(body)]
        finally:
            if hasattr(body, "close"):
                body.close()
    return app


@pytest.mark.parametrize(("api_schema", "path", "method", "mode"), CASES, indirect=["api_schema"])
def test_every_generated_request_is_answered_as_documented(api_schema, path, method, mode):
    operation = api_schema[path][method.upper()]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def answered_as_documented(case):
        case.call_and_validate(checks=CHECKS, headers=HEADERS)

    answered_as_documented()
