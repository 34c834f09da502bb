"""The OpenAPI 3 document for the whole HTTP API, built from the marshmallow schemas."""

from __future__ import annotations

from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

from service.web import schemas

_ERRORS = {
    "400": "malformed JSON, wrong shape or dtype, NaN or out-of-range values, undecodable image",
    "404": "unknown model or version",
    "413": "body larger than TRAINSERVE_MAX_REQUEST_BYTES",
    "415": "unsupported content type",
    "429": "the model's queue is full; retry after the Retry-After header's seconds",
    "503": "not ready (starting or draining)",
    "504": "the request's deadline (TRAINSERVE_REQUEST_TIMEOUT_S) passed",
}
_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}, "example": "mnist-cnn"}
_VERSION = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}, "example": "1"}
_JSON = {"type": "object"}
_INFER_ERRORS = ("400", "404", "413", "415", "429", "503", "504")

# (path, method, summary, request body {content type: schema}, response schema, error statuses, example)
_ROUTES: list[tuple[str, str, str, dict[str, Any] | None, Any, tuple[str, ...], str]] = [
    ("/healthz", "get", "Liveness probe", None, _JSON, (), ""),
    ("/readyz", "get", "Readiness probe: models loaded, warmed up, not draining", None, _JSON, ("503",), ""),
    ("/metrics", "get", "Prometheus metrics, summed over all workers", None, None, (), ""),
    ("/v1/models", "get", "List served models and versions", None, _JSON, (), ""),
    ("/v1/models/{name}:predict", "post", "Predict from pixel lists", {"application/json": "PredictRequest"},
     "PredictResponse", _INFER_ERRORS,
     '{"instances": [[[0.0, 0.5, ...28 values], ...28 rows]], "top_k": 3}; a feature model: '
     '{"instances": [{"age": 61, "height": 172}], "threshold": 0.3}'),
    ("/v1/models/{name}:classify", "post", "Classify uploaded PNG/JPEG images (raw body or multipart files)",
     {"image/png": "binary", "image/jpeg": "binary", "multipart/form-data": "files"}, "PredictResponse",
     _INFER_ERRORS, ""),
    ("/v1/models/{name}/versions/{version}:predict", "post", "Predict with one version",
     {"application/json": "PredictRequest"}, "PredictResponse", _INFER_ERRORS, ""),
    ("/v1/models/{name}/versions/{version}:classify", "post", "Classify images with one version",
     {"image/png": "binary", "image/jpeg": "binary", "multipart/form-data": "files"}, "PredictResponse",
     _INFER_ERRORS, ""),
    ("/v2", "get", "OIP server metadata", None, _JSON, (), ""),
    ("/v2/health/live", "get", "OIP liveness", None, _JSON, (), ""),
    ("/v2/health/ready", "get", "OIP readiness", None, _JSON, ("503",), ""),
    ("/v2/models/{name}", "get", "OIP model metadata (newest version)", None, _JSON, ("404",), ""),
    ("/v2/models/{name}/versions/{version}", "get", "OIP model metadata", None, _JSON, ("404",), ""),
    ("/v2/models/{name}/ready", "get", "OIP model readiness", None, _JSON, ("404", "503"), ""),
    ("/v2/models/{name}/versions/{version}/ready", "get", "OIP model version readiness", None, _JSON,
     ("404", "503"), ""),
    ("/v2/models/{name}/infer", "post", "OIP inference (newest version)",
     {"application/json": "InferRequest"}, "InferResponse", _INFER_ERRORS,
     '{"id": "1", "inputs": [{"name": "input", "shape": [1, 784], "datatype": "UINT8", "data": [0, ...]}]}; '
     'a feature model takes FP32 [N, F]; "parameters": {"threshold": 0.3} for binary and multilabel models'),
    ("/v2/models/{name}/versions/{version}/infer", "post", "OIP inference on one version",
     {"application/json": "InferRequest"}, "InferResponse", _INFER_ERRORS, ""),
    ("/openapi.json", "get", "This document", None, _JSON, (), ""),
    ("/docs", "get", "Human-readable API documentation (works offline)", None, None, (), ""),
]


def build_spec(version: str = "0.1.0") -> dict[str, Any]:
    """The OpenAPI document as a dict."""
    spec = APISpec(title="trainserve", version=version, openapi_version="3.0.3",
                   plugins=[MarshmallowPlugin()],
                   info={"description": "Classification (multi-class, binary, multi-label; images or "
                                        "named features) with dynamic batching: the Open Inference "
                                        "Protocol v2, a simple JSON API and image uploads."})
    for name in ("PredictRequest", "PredictResponse", "InferRequest", "InferResponse", "Error"):
        spec.components.schema(name, schema=getattr(schemas, name))
    for path, method, summary, body, response, errors, example in _ROUTES:
        spec.path(path=path, operations={method: _operation(path, summary, body, response, errors, example)})
    return spec.to_dict()


def _operation(path: str, summary: str, body: dict[str, Any] | None, response: Any, errors: tuple[str, ...],
               example: str) -> dict[str, Any]:
    params = [p for p in (_NAME, _VERSION) if "{" + p["name"] + "}" in path]
    ok: dict[str, Any] = {"description": "OK"}
    if response is not None:
        ok["content"] = {"application/json": {"schema": response}}
    op: dict[str, Any] = {"summary": summary, "parameters": params, "responses": {"200": ok}}
    for status in errors:
        op["responses"][status] = {"description": _ERRORS[status],
                                   "content": {"application/json": {"schema": "Error"}}}
    if body:
        content = {ctype: _body(kind) for ctype, kind in body.items()}
        op["requestBody"] = {"required": True, "content": content}
        if example:
            op["description"] = f"Example body: `{example}`"
    if path.endswith(":classify"):
        op["parameters"].append({"name": "top_k", "in": "query", "schema": {"type": "integer", "minimum": 1}})
    return op


def _body(kind: str) -> dict[str, Any]:
    if kind == "binary":
        return {"schema": {"type": "string", "format": "binary"}}
    if kind == "files":
        return {"schema": {"type": "object", "additionalProperties": {"type": "string", "format": "binary"}}}
    return {"schema": kind}
