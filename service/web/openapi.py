"""The OpenAPI 3 document for the whole HTTP API, built from the marshmallow schemas."""

from __future__ import annotations

from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

from service.web import schemas

_ERRORS = {
    "400": "malformed JSON, wrong shape or dtype, NaN or out-of-range values, undecodable image",
    "401": "no Authorization: Bearer <token> header (the management token)",
    "403": "a wrong token, or the repository API is off (TRAINSERVE_MANAGEMENT_TOKEN unset)",
    "404": "unknown model or version",
    "413": "body larger than TRAINSERVE_MAX_REQUEST_BYTES",
    "415": "unsupported content type",
    "429": "the model's queue is full; retry after the Retry-After header's seconds",
    "503": "not ready (starting or draining)",
    "501": "not implemented by this service",
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
     '{"instances": [[[0.0, 0.5, ...28 values], ...28 rows]], "top_k": 3}'),
    ("/v1/models/{name}:classify", "post", "Classify uploaded PNG/JPEG images (raw body or multipart files)",
     {"image/png": "binary", "image/jpeg": "binary", "multipart/form-data": "files"}, "PredictResponse",
     _INFER_ERRORS, ""),
    ("/v1/models/{name}/versions/{version}:predict", "post", "Predict with one version",
     {"application/json": "PredictRequest"}, "PredictResponse", _INFER_ERRORS, ""),
    ("/v1/models/{name}/versions/{version}:classify", "post", "Classify images with one version",
     {"image/png": "binary", "image/jpeg": "binary", "multipart/form-data": "files"}, "PredictResponse",
     _INFER_ERRORS, ""),
    ("/v1/models/{name}/manifest", "get", "The model's manifest (newest version) and its plots' file names",
     None, _JSON, ("404",), ""),
    ("/v1/models/{name}/versions/{version}/manifest", "get",
     "One version's manifest and its plots' file names", None, _JSON, ("404",), ""),
    ("/v1/models/{name}/versions/{version}/files/{file}", "get",
     "A plot training wrote into the artifact (a PNG: curves.png, confusion.png, mistakes.png...)", None,
     "png", ("404",), ""),
    ("/v1/models/{name}/stats", "get", "Live figures (newest version): requests, latency percentiles, "
     "batch sizes, from the service's metrics", None, _JSON, ("404",), ""),
    ("/v1/models/{name}/versions/{version}/stats", "get", "Live figures of one version", None, _JSON,
     ("404",), ""),
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
     '{"id": "1", "inputs": [{"name": "input", "shape": [1, 784], "datatype": "UINT8", "data": [0, ...]}]}'),
    ("/v2/models/{name}/versions/{version}/infer", "post", "OIP inference on one version",
     {"application/json": "InferRequest"}, "InferResponse", _INFER_ERRORS, ""),
    ("/v2/models/stats", "get", "Triton statistics of every served model version", None, _JSON, (), ""),
    ("/v2/models/{name}/stats", "get", "Triton statistics of every version of a model: inference and "
     "execution counts, success/fail, queue and compute time, over every worker and runtime", None, _JSON,
     ("404",), ""),
    ("/v2/models/{name}/versions/{version}/stats", "get", "Triton statistics of one version", None, _JSON,
     ("404",), ""),
    ("/v2/models/{name}/config", "get", "Triton model configuration: max batch size, inputs, outputs, "
     "dynamic batching and queue settings", None, _JSON, ("404",), ""),
    ("/v2/models/{name}/versions/{version}/config", "get", "Triton model configuration of one version", None,
     _JSON, ("404",), ""),
    ("/v2/repository/index", "post", "Every artifact in the model repository and its state (READY, or "
     "UNAVAILABLE with the reason); needs the management token", {"application/json": _JSON},
     {"type": "array", "items": _JSON}, ("400", "401", "403"), '{"ready": false}'),
    ("/v2/repository/models/{name}/load", "post", "Load a model: 501 until the runtime swaps models (model "
     "control 'none'); needs the management token", None, None, ("401", "403", "404", "501"), ""),
    ("/v2/repository/models/{name}/unload", "post", "Unload a model: 501 for the same reason", None, None,
     ("401", "403", "404", "501"), ""),
    ("/v1/models/{name}", "get", "KServe v1 model status: name and ready (503 while not ready)", None, _JSON,
     ("404", "503"), ""),
    ("/v1/models/{name}:explain", "post", "KServe v1 explain: no explainer is served", None, None,
     ("404", "501"), ""),
    ("/openapi.json", "get", "This document", None, _JSON, (), ""),
    ("/docs", "get", "Human-readable API documentation (works offline)", None, None, (), ""),
    ("/", "get", "The web page: draw or upload a digit, see every served model's answer", None, "html", (),
     ""),
    ("/ui/", "get", "The same web page", None, "html", (), ""),
    ("/ui/models/{name}", "get", "A model's page (newest version)", None, "html", ("404",), ""),
    ("/ui/models/{name}/{version}", "get", "A model's page: its manifest, plots and live figures", None,
     "html", ("404",), ""),
]
_FILE = {"name": "file", "in": "path", "required": True, "schema": {"type": "string"},
         "example": "curves.png"}
_CLASSIFY_QUERY = [
    {"name": "top_k", "in": "query", "schema": {"type": "integer", "minimum": 1}},
    {"name": "include_input", "in": "query", "schema": {"type": "boolean", "default": False},
     "description": "true: each prediction carries `input`, the preprocessed image as the model received it"},
]
_MEDIA = {"png": "image/png", "html": "text/html"}


def build_spec(version: str = "0.1.0") -> dict[str, Any]:
    """The OpenAPI document as a dict."""
    spec = APISpec(title="trainserve", version=version, openapi_version="3.0.3",
                   plugins=[MarshmallowPlugin()],
                   info={"description": "Image classification with dynamic batching: the Open Inference "
                                        "Protocol v2, a simple JSON API and image uploads."})
    for name in ("PredictRequest", "PredictResponse", "InferRequest", "InferResponse", "Error"):
        spec.components.schema(name, schema=getattr(schemas, name))
    for path, method, summary, body, response, errors, example in _ROUTES:
        spec.path(path=path, operations={method: _operation(path, summary, body, response, errors, example)})
    return spec.to_dict()


def _operation(path: str, summary: str, body: dict[str, Any] | None, response: Any, errors: tuple[str, ...],
               example: str) -> dict[str, Any]:
    params = [p for p in (_NAME, _VERSION, _FILE) if "{" + p["name"] + "}" in path]
    ok: dict[str, Any] = {"description": "OK"}
    if isinstance(response, str) and response in _MEDIA:
        ok["content"] = {_MEDIA[response]: {"schema": {"type": "string"}}}
    elif response is not None:
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
        op["parameters"] += _CLASSIFY_QUERY
    return op


def _body(kind: str) -> dict[str, Any]:
    if kind == "binary":
        return {"schema": {"type": "string", "format": "binary"}}
    if kind == "files":
        return {"schema": {"type": "object", "additionalProperties": {"type": "string", "format": "binary"}}}
    return {"schema": kind}
