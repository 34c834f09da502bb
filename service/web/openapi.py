"""The OpenAPI 3 document for the whole HTTP API: the marshmallow schemas, narrowed to the served models.

The request schemas say what every request must look like; what the pixels must look like depends on the
served models' input specs, so the document is built for a catalog: model names and versions are enums,
v1 pixel lists have exactly the shapes ``tensors.parse_tensor`` accepts (``tensors.example_shapes``,
the rule the service checks), and every pixel value its datatype's range. What OpenAPI 3.0 cannot say
(OIP data's element count against its declared shape, shape dimensions by position, the binary header's
length against the body) the descriptions say, and the service answers 400.

Its paths are the app's routes: one row of ``ROUTES`` each, held against the app's URL rules whenever the
document is built, so that a route cannot be served undocumented nor documented unserved.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np
from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from werkzeug.routing import Map

from service.contract.manifest import InputSpec, Manifest
from service.handoff.versions import ModelVersions
from service.web import binary, schemas, triton_schemas
from service.web.confidence import OUTLIER_OUTPUTS
from service.web.exchange import DATATYPE
from service.web.tensors import DATATYPES, FLOAT32_MAX, INTEGERS, example_shapes

_ERRORS = {
    "400": "malformed JSON, wrong shape or dtype, NaN or out-of-range values, undecodable image, "
           "a corrupt gzip/deflate body",
    "401": "no Authorization: Bearer <token> header (the management token; the feedback token for feedback)",
    "403": "a wrong token, or the repository API is off (TRAINSERVE_MANAGEMENT_TOKEN unset)",
    "404": "unknown model or version",
    "408": "the body did not arrive within the request's deadline (TRAINSERVE_REQUEST_TIMEOUT_S)",
    "413": "body larger than TRAINSERVE_MAX_REQUEST_BYTES",
    "415": "unsupported content type or Content-Encoding",
    "429": "the model's queue is full; retry after the Retry-After header's seconds",
    "500": "the model failed on the batch this request was in",
    "409": "model control is not 'explicit': load and unload are off (TRAINSERVE_MODEL_CONTROL); a routing "
           "change its state refuses (no earlier default, no canary to stop) or cannot write",
    "501": "not implemented by this service",
    "503": "not ready (starting, draining, or the model runtime is restarting)",
    "504": "the request's deadline (TRAINSERVE_REQUEST_TIMEOUT_S) passed",
}
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying",
                                "schema": {"type": "integer", "minimum": 0}}}
_INFER_ERRORS = ("400", "404", "408", "413", "415", "429", "500", "503", "504")
_MANAGEMENT = ("401", "403", "408", "413", "415")  # behind the token; the body is read (bounded) first
_CODING = {"name": "Content-Encoding", "in": "header", "schema": {"type": "string", "enum": [
    "gzip", "x-gzip", "deflate", "identity"]}, "description": "the body is compressed: decoded within "
    "TRAINSERVE_MAX_REQUEST_BYTES (413 beyond), 400 when corrupt, 415 for another coding"}
_BYTES = {"type": "string", "format": "binary"}
_IMAGE = {"schema": _BYTES}
_FILES = {"schema": {"type": "object", "required": ["file"],
                     "properties": {"file": {"type": "array", "minItems": 1, "items": _BYTES,
                                             "description": "one or more PNG/JPEG files (every file part "
                                                            "of the body is read, whatever its name)"}}},
          "encoding": {"file": {"contentType": "image/png, image/jpeg"}}}
_CLASSIFY_BODY = {"image/png": _IMAGE, "image/jpeg": _IMAGE, "image/*": _IMAGE,
                  "application/octet-stream": _IMAGE, "multipart/form-data": _FILES}
_EXPLAIN_BODY = {"application/json": {"schema": "ExplainRequest"}} | _CLASSIFY_BODY
_FEEDBACK_BODY = {"application/json": {"schema": "FeedbackRequest"}} | _CLASSIFY_BODY
_EXPLAIN_QUERY = [
    {"name": "targets", "in": "query", "schema": {"type": "string"},
     "description": "image bodies: labels to explain besides the predicted one, comma-separated"},
    {"name": "method", "in": "query", "schema": {"type": "string", "enum": ["integrated_gradients",
                                                                          "occlusion"]}},
    {"name": "steps", "in": "query", "schema": {"type": "integer", "minimum": 1}},
    {"name": "plain", "in": "query", "schema": {"type": "boolean", "default": False}},
]
_BINARY_INFER = ("a JSON inference header of Inference-Header-Content-Length bytes, then the raw "
                 "little-endian bytes of every input whose parameters give binary_data_size")
_INFER_BODY = {"application/json": {"schema": "InferRequest"},
               "application/octet-stream": {"schema": _BYTES | {"description": _BINARY_INFER}}}
_INFER_OK = {"application/json": "InferResponse",
             "application/octet-stream": _BYTES | {"description": "the JSON response header, then the "
                                                                  "outputs asked for as binary_data"}}
_OBJECT = {"application/json": {"type": "object"}}
_HTML = {"text/html": {"type": "string"}}
_REPOSITORY_INDEX = {"application/json": {"type": "array",
                                          "items": {"$ref": "#/components/schemas/RepositoryEntry"}}}
_REPOSITORY_ACTION = {"application/json": "RepositoryAction"}
# Triton's load body may carry a config override or model files: refused (400); unload_dependents is moot.
_CONTROL_BODY = {"application/json": {"schema": {"type": "object", "properties": {"parameters": {
    "type": "object", "description": "tritonclient's unload_dependents is accepted; a config or file: "
    "override is refused"}}}}}
# KServe v1 answers a model that is not ready with its status (503); a catalog never read is an Error.
_STATUS_503 = {"anyOf": [{"$ref": "#/components/schemas/ModelStatus"},
                         {"$ref": "#/components/schemas/Error"}]}
_REPOSITORY = "/v2/repository/"
_BEARER = "bearer"
# Rollouts (service/web/api/routing.py): the changes' bodies and the state's document.
_VERSION = {"type": "string", "pattern": "^[1-9][0-9]{0,8}$", "example": "2"}
_PERCENT = {"type": "number", "exclusiveMinimum": True, "minimum": 0, "maximum": 100}
_FRACTION = {"type": "number", "minimum": 0, "maximum": 1, "nullable": True}
_BUDGET = {"type": "object", "additionalProperties": False, "description": "the automatic rollback's "
           "limits over at least min_requests (null turns a check off)", "properties": {
               "max_error_rate": _FRACTION | {"default": 0.05},
               "max_disagreement": _FRACTION | {"default": 0.1},
               "min_requests": {"type": "integer", "minimum": 1, "default": 100}}}
_ROUTING = "/v2/repository/models/{name}/routing"


def _routing_body(**fields: dict[str, Any]) -> dict[str, Any]:
    required = [f for f in fields if f != "budget"]
    return {"application/json": {"schema": {"type": "object", "additionalProperties": False,
                                            "required": required, "properties": fields}}}


_ROUTING_CHANGE_ERRORS = ("400", *_MANAGEMENT, "404", "409", "503", "504")
# Every name an artifact folder can have (service/contract/manifest.py's rule).
_REPOSITORY_NAME = {"name": "name", "in": "path", "required": True, "example": "mnist-cnn",
                    "schema": {"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]{0,63}$"}}
_INDEX_BODY = {"application/json": {"schema": {"type": "object", "properties": {"ready": {
    "type": "boolean", "default": False, "description": "true: only the READY entries"}}}}}
_FILE = {"name": "file", "in": "path", "required": True, "schema": {"type": "string"},
         "example": "curves.png"}
_CLASSIFY_QUERY = [
    {"name": "top_k", "in": "query", "schema": {"type": "integer", "minimum": 1}},
    {"name": "include_input", "in": "query", "schema": {"type": "boolean", "default": False},
     "description": "true: each prediction carries `input`, the preprocessed image as the model received it"},
    {"name": "plain", "in": "query", "schema": {"type": "boolean", "default": False},
     "description": "true: an image flagged as an outlier (\"not a digit\") still gets its label, otherwise "
                    "null; the flag and the score are given either way"},
]
_PREDICT_EXAMPLE = ('{"instances": [[[0.0, 0.5, ...28 values], ...28 rows]], "top_k": 3}; a feature model: '
                    '{"instances": [{"age": 61, "height": 172}], "threshold": 0.3}')
_EXPLAIN_EXAMPLE = '{"instances": [[[0, 0, ...28 values], ...28 rows]], "dtype": "uint8", "targets": ["3"]}'
_INFER_EXAMPLE = ('{"id": "1", "inputs": [{"name": "input", "shape": [1, 784], "datatype": "UINT8", '
                  '"data": [0, ...]}]}; a feature model takes FP32 [N, F]; "parameters": {"threshold": 0.3} '
                  'for binary and multilabel models')

# One row per route the app serves, in the order the document lists them; check_routes holds the rows and
# the app's URL rules one for one. (path, method, summary, request body {content type: schema},
# 200 body {content type: schema}, error statuses, example)
_Route = tuple[str, str, str, dict[str, Any] | None, dict[str, Any] | None, tuple[str, ...], str]
ROUTES: list[_Route] = [
    ("/healthz", "get", "Liveness probe", None, {"application/json": "Status"}, (), ""),
    ("/readyz", "get", "Readiness probe: models loaded, warmed up, not draining", None,
     {"application/json": "Readiness"}, ("503",), ""),
    ("/metrics", "get", "Prometheus metrics, summed over all workers", None,
     {"text/plain": {"type": "string"}}, (), ""),
    ("/v1/models", "get", "List served models and versions", None, {"application/json": "ModelList"},
     ("503",), ""),
    ("/v1/models/{name}:predict", "post", "Predict from pixel lists",
     {"application/json": {"schema": "PredictRequest"}}, {"application/json": "PredictResponse"},
     _INFER_ERRORS, _PREDICT_EXAMPLE),
    ("/v1/models/{name}:classify", "post", "Classify uploaded PNG/JPEG images (raw body or multipart files)",
     _CLASSIFY_BODY, {"application/json": "PredictResponse"}, _INFER_ERRORS, ""),
    ("/v1/models/{name}/versions/{version}:predict", "post", "Predict with one version",
     {"application/json": {"schema": "PredictRequest"}}, {"application/json": "PredictResponse"},
     _INFER_ERRORS, ""),
    ("/v1/models/{name}/versions/{version}:classify", "post", "Classify images with one version",
     _CLASSIFY_BODY, {"application/json": "PredictResponse"}, _INFER_ERRORS, ""),
    ("/v1/models/{name}/manifest", "get", "The model's manifest (newest version) and its plots' file names",
     None, _OBJECT, ("404", "503"), ""),
    ("/v1/models/{name}/versions/{version}/manifest", "get",
     "One version's manifest and its plots' file names", None, _OBJECT, ("404", "503"), ""),
    ("/v1/models/{name}/versions/{version}/files/{file}", "get",
     "A plot training wrote into the artifact (a PNG: curves.png, confusion.png, mistakes.png...)", None,
     {"image/png": _BYTES}, ("404", "503"), ""),
    ("/v1/models/{name}/stats", "get", "Live figures (newest version): requests, latency percentiles, "
     "batch sizes, from the service's metrics", None, _OBJECT, ("404", "503"), ""),
    ("/v1/models/{name}/versions/{version}/stats", "get", "Live figures of one version", None, _OBJECT,
     ("404", "503"), ""),
    ("/v2", "get", "OIP server metadata", None, {"application/json": "ServerMetadata"}, (), ""),
    ("/v2/health/live", "get", "OIP liveness", None, {"application/json": "Live"}, (), ""),
    ("/v2/health/ready", "get", "OIP readiness", None, {"application/json": "Ready"}, ("503",), ""),
    ("/v2/models/{name}", "get", "OIP model metadata (newest version)", None,
     {"application/json": "ModelMetadata"}, ("404", "503"), ""),
    ("/v2/models/{name}/versions/{version}", "get", "OIP model metadata", None,
     {"application/json": "ModelMetadata"}, ("404", "503"), ""),
    ("/v2/models/{name}/ready", "get", "OIP model readiness", None, {"application/json": "ModelReady"},
     ("404", "503"), ""),
    ("/v2/models/{name}/versions/{version}/ready", "get", "OIP model version readiness", None,
     {"application/json": "ModelReady"}, ("404", "503"), ""),
    ("/v2/models/{name}/infer", "post", "OIP inference (newest version)", _INFER_BODY, _INFER_OK,
     _INFER_ERRORS, _INFER_EXAMPLE),
    ("/v2/models/{name}/versions/{version}/infer", "post", "OIP inference on one version", _INFER_BODY,
     _INFER_OK, _INFER_ERRORS, ""),
    ("/v2/models/stats", "get", "Triton statistics of every served model version", None,
     {"application/json": "Statistics"}, ("503",), ""),
    ("/v2/models/{name}/stats", "get", "Triton statistics of every version of a model: inference and "
     "execution counts, success/fail, queue and compute time, over every worker and runtime", None,
     {"application/json": "Statistics"}, ("404", "503"), ""),
    ("/v2/models/{name}/versions/{version}/stats", "get", "Triton statistics of one version", None,
     {"application/json": "Statistics"}, ("404", "503"), ""),
    ("/v2/models/{name}/config", "get", "Triton model configuration: max batch size, inputs, outputs, "
     "dynamic batching and queue settings", None, {"application/json": "ModelConfig"}, ("404", "503"), ""),
    ("/v2/models/{name}/versions/{version}/config", "get", "Triton model configuration of one version", None,
     {"application/json": "ModelConfig"}, ("404", "503"), ""),
    ("/v2/repository/index", "post", "Every artifact in the model repository and its state (READY, or "
     "UNAVAILABLE with the reason); needs the management token", _INDEX_BODY, _REPOSITORY_INDEX,
     ("400", *_MANAGEMENT, "503"), '{"ready": false}'),
    ("/v2/repository/models/{name}/load", "post", "Load (or reload) the versions of a model the version "
     "policy selects, on every runtime, answering once they are warm (model control 'explicit'; 409 "
     "otherwise); needs the management token", _CONTROL_BODY, _REPOSITORY_ACTION,
     ("400", *_MANAGEMENT, "404", "409", "503", "504"), ""),
    ("/v2/repository/models/{name}/unload", "post", "Stop serving a model (requests already sent to it "
     "finish first; model control 'explicit'); needs the management token", _CONTROL_BODY, _REPOSITORY_ACTION,
     ("400", *_MANAGEMENT, "404", "409", "503", "504"), ""),
    ("/v1/models/{name}/routing", "get", "The model's routing (default, canary, shadow) as written and as "
     "served, the history of its changes, and each served version's requests, latency, labels and "
     "agreement with the default", None, _OBJECT, ("404", "409", "503"), ""),
    (f"{_ROUTING}/default", "put", "Make a version the default a bare name addresses (a canary or shadow "
     "of it ends); answers once every runtime serves it; needs the management token",
     _routing_body(version=_VERSION), _OBJECT, _ROUTING_CHANGE_ERRORS, '{"version": "1"}'),
    (f"{_ROUTING}/rollback", "post", "Go back to the default before the current one; needs the management "
     "token", None, _OBJECT, _ROUTING_CHANGE_ERRORS, ""),
    (f"{_ROUTING}/canary", "put", "Start a canary (a version answering a percentage of the requests "
     "addressed to the default, by X-Client-ID), or change its percent and budget; needs the management "
     "token", _routing_body(version=_VERSION, percent=_PERCENT, budget=_BUDGET), _OBJECT,
     _ROUTING_CHANGE_ERRORS, '{"version": "2", "percent": 10, "budget": {"max_error_rate": 0.05}}'),
    (f"{_ROUTING}/canary", "delete", "Stop the canary; needs the management token", None, _OBJECT,
     _ROUTING_CHANGE_ERRORS, ""),
    (f"{_ROUTING}/shadow", "put", "Start a shadow (a version getting a copy of a percentage of the "
     "default's requests after they are answered; its answers are compared and discarded), or change its "
     "percent; needs the management token", _routing_body(version=_VERSION, percent=_PERCENT), _OBJECT,
     _ROUTING_CHANGE_ERRORS, '{"version": "2", "percent": 10}'),
    (f"{_ROUTING}/shadow", "delete", "Stop the shadow; needs the management token", None, _OBJECT,
     _ROUTING_CHANGE_ERRORS, ""),
    ("/v1/models/{name}", "get", "KServe v1 model status: name and ready (503 while not ready)", None,
     {"application/json": "ModelStatus"}, ("404", "503"), ""),
    ("/v1/models/{name}:explain", "post", "KServe v1 explain: predictions and per-pixel (per-feature) "
     "attributions for each example's predicted label and any other asked for (Integrated Gradients or "
     "occlusion, computed in the model runtime)", _EXPLAIN_BODY, {"application/json": "ExplainResponse"},
     _INFER_ERRORS, _EXPLAIN_EXAMPLE),
    ("/v1/models/{name}/versions/{version}:explain", "post", "KServe v1 explain with one version",
     _EXPLAIN_BODY, {"application/json": "ExplainResponse"}, _INFER_ERRORS, ""),
    ("/v1/models/{name}/feedback", "post", "A correction of the default version's answer: the input as the "
     "model received it (:classify?include_input=true) and its true label, stored under "
     "TRAINSERVE_FEEDBACK_DIR for training (409 while that is unset; 429 beyond "
     "TRAINSERVE_FEEDBACK_PER_MINUTE or _MAX_ITEMS; 401/403 without TRAINSERVE_FEEDBACK_TOKEN when set)",
     _FEEDBACK_BODY, _OBJECT, (*_INFER_ERRORS, "401", "403", "409"), ""),
    ("/v1/models/{name}/versions/{version}/feedback", "post", "A correction of one version's answer",
     _FEEDBACK_BODY, _OBJECT, (*_INFER_ERRORS, "401", "403", "409"), ""),
    ("/openapi.json", "get", "This document (for the models served now)", None, _OBJECT, ("503",), ""),
    ("/docs", "get", "Human-readable API documentation (works offline)", None, _HTML, ("503",), ""),
    ("/", "get", "The web page: draw or upload a digit, see every served model's answer (to a client whose "
     "Accept names text/html); KServe v1 liveness, {\"status\": \"alive\"}, to any other", None,
     _HTML | {"application/json": "Alive"}, (), ""),
    ("/ui/", "get", "The same web page", None, _HTML, (), ""),
    ("/ui/models/{name}", "get", "A model's page (newest version)", None, _HTML, ("404", "503"), ""),
    ("/ui/models/{name}/{version}", "get", "A model's page: its manifest, plots and live figures", None,
     _HTML, ("404", "503"), ""),
]
_COMPONENTS = ("PredictRequest", "PredictResponse", "ExplainRequest", "ExplainResponse", "FeedbackRequest",
               "InferRequest",
               "InferResponse", "ModelList", "Status",
               "Readiness", "ServerMetadata", "Live", "Ready", "ModelMetadata", "ModelReady", "Error")


# Files (Flask's static folder, the web page's script and style), not operations of the API.
_STATIC_ENDPOINTS = frozenset({"static", "ui.static"})
_RULE_ARGUMENT = re.compile(r"<(?:[^<>:]+:)?([^<>]+)>")  # <name> or <converter:name>


def _served(url_map: Map) -> Counter[tuple[str, str]]:
    # Flask answers HEAD and OPTIONS on every rule by itself: they are not operations of their own.
    return Counter((_RULE_ARGUMENT.sub(r"{\1}", rule.rule), method.lower())
                   for rule in url_map.iter_rules() if rule.endpoint not in _STATIC_ENDPOINTS
                   for method in (rule.methods or set()) - {"HEAD", "OPTIONS"})


def check_routes(url_map: Map) -> None:
    """Refuse a ROUTES table that differs from the app's URL rules (a route undocumented, or invented)."""
    served = _served(url_map)
    documented = Counter((path, method) for path, method, *_ in ROUTES)
    if served != documented:
        raise ValueError(f"ROUTES (service/web/openapi.py) and the app's routes differ: undocumented "
                         f"{sorted(served - documented)}, not served {sorted(documented - served)}")


def build_spec(catalog: ModelVersions[Any], url_map: Map, version: str = "0.1.0") -> dict[str, Any]:
    """The OpenAPI document as a dict, for the models in ``catalog`` and the routes in ``url_map``."""
    check_routes(url_map)  # so the rows below are exactly the app's routes
    spec = APISpec(title="trainserve", version=version, openapi_version="3.0.3",
                   plugins=[MarshmallowPlugin()],
                   info={"description": "Classification (multi-class, binary, multi-label; images or "
                                        "named features) with dynamic batching: the Open Inference "
                                        "Protocol v2, a simple JSON API and image uploads. Request "
                                        "bodies may be gzip or deflate coded (Content-Encoding); answers "
                                        "of 1 KiB or more are gzipped for a client whose Accept-Encoding "
                                        "allows it."})
    for name in _COMPONENTS:
        spec.components.schema(name, schema=getattr(schemas, name))
    for name in triton_schemas.COMPONENTS:
        spec.components.schema(name, schema=getattr(triton_schemas, name))
    spec.components.security_scheme(_BEARER, {"type": "http", "scheme": "bearer",
                                              "description": "TRAINSERVE_MANAGEMENT_TOKEN"})
    names = sorted(catalog.models)
    versions = sorted({v for served in catalog.models.values() for v in served}, key=int)
    params = [_path_param("name", names), _path_param("version", versions), _FILE]
    for path, method, summary, body, ok, errors, example in ROUTES:
        op = _operation(path, summary, body, ok, errors, example)
        # The repository names every artifact folder, served or not (404: none of that name).
        found = [_REPOSITORY_NAME] if path.startswith(_REPOSITORY) else params
        op["parameters"] = [p for p in found if f"{{{p['name']}}}" in path] + op["parameters"]
        spec.path(path=path, operations={method: op})
    document = copy.deepcopy(spec.to_dict())  # it shares dicts with the fields' metadata: narrowed below
    components = document["components"]["schemas"]
    manifests = [model.manifest for model in catalog]
    _narrow(components, [m.input for m in manifests])
    _narrow_tasks(components, manifests)
    if manifests and all(m.outliers is None for m in manifests):  # no model has the outputs to ask for
        name = components["RequestedOutput"]["properties"]["name"]
        name["enum"] = [output for output in name["enum"] if output not in OUTLIER_OUTPUTS]
    # A body that names its model must name the one in the path (not expressible: the description says so).
    named = components["InferRequest"]["properties"]
    named["model_name"] |= {"enum": names} if names else {}
    named["model_version"] |= {"enum": versions} if versions else {}
    return document


def _operation(path: str, summary: str, body: dict[str, Any] | None, ok: dict[str, Any] | None,
               errors: tuple[str, ...], example: str) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "parameters": [], "responses": {}}
    if ok is not None:  # None: the route never answers 200 (the errors say what it answers)
        op["responses"]["200"] = {"description": "OK", "content": {
            ctype: {"schema": schema} for ctype, schema in ok.items()}}
    for status in errors:
        schema = _STATUS_503 if (path, status) == ("/v1/models/{name}", "503") else "Error"
        response = {"description": _ERRORS[status], "content": {"application/json": {"schema": schema}}}
        if status in ("429", "503"):
            response["headers"] = _RETRY_AFTER
        op["responses"][status] = response
    if path.startswith(_REPOSITORY):
        op["security"] = [{_BEARER: []}]
    if body:
        # The repository routes take no body as {}.
        optional = body is _INDEX_BODY or body is _CONTROL_BODY
        op["requestBody"] = {"required": not optional, "content": copy.deepcopy(body)}
        op["parameters"].append(copy.deepcopy(_CODING))
    if example:
        op["description"] = f"Example body: `{example}`"
    if path.endswith(":classify"):
        op["parameters"] += copy.deepcopy(_CLASSIFY_QUERY)
    if path.endswith(":explain"):
        op["parameters"] += copy.deepcopy(_EXPLAIN_QUERY)
    if path.endswith("/feedback"):
        op["parameters"] += [{"name": "label", "in": "query", "schema": {"type": "string"},
                              "description": "image bodies: the true label"},
                             {"name": "request_id", "in": "query", "schema": {"type": "string"}}]
    if path.endswith("/infer"):
        op["parameters"].append({"name": binary.HEADER, "in": "header", "schema": {"type": "integer",
                                 "minimum": 1}, "description": "binary tensor data extension: the length "
                                 "of the JSON header at the start of the body"})
    return op


def _path_param(name: str, values: list[str]) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", "enum": values} if values else {"type": "string"}
    param = {"name": name, "in": "path", "required": True, "schema": schema}
    return param | ({"example": values[0]} if values else {})


def _narrow_tasks(components: dict[str, Any], manifests: list[Manifest]) -> None:
    """Without a binary or multilabel model served, no request may carry a threshold or ask for decisions."""
    if not manifests or any(m.task != "multiclass" for m in manifests):
        return
    for variant in components["PredictRequest"].get("oneOf", [components["PredictRequest"]]):
        del variant["properties"]["threshold"]
    parameters = components["InferRequest"]["properties"]["parameters"]
    del parameters["properties"]["threshold"]
    parameters["not"] = {"required": ["threshold"]}
    name = components["RequestedOutput"]["properties"]["name"]
    name["enum"] = [output for output in name["enum"] if output != "decisions"]


def _narrow(components: dict[str, Any], specs: Iterable[InputSpec]) -> None:
    """Give the input fields the shapes and ranges the served models take (one variant per datatype)."""
    specs = list({json.dumps(dataclasses.asdict(s), sort_keys=True): s for s in specs}.values())
    if not specs:
        return
    datatypes = ["FP32"] + (["UINT8"] if any(s.accepts_uint8 for s in specs) else [])
    takers = {dt: [s for s in specs if dt == "FP32" or s.accepts_uint8] for dt in datatypes}
    components["PredictRequest"] = {"oneOf": [_predict_variant(components["PredictRequest"], dt, takers[dt])
                                              for dt in datatypes]}
    # OIP tensors: every float type within the range (converted to FP32), every integer type 0..255 where
    # it can hold that (pixels, converted to UINT8), one variant per kind of value.
    groups = [[dt for dt in DATATYPES if dt in _FLOAT_TYPES]]
    if "UINT8" in datatypes:
        highs = {dt: _highest_pixel(dt) for dt in DATATYPES if dt not in _FLOAT_TYPES}
        groups += [[dt for dt in highs if highs[dt] == high] for high in sorted(set(highs.values()))]
    base = components["TensorInput"]
    components["TensorInput"] = {"oneOf": [
        _tensor_variant(base, group, takers["FP32" if group[0] in _FLOAT_TYPES else "UINT8"])
        for group in groups]}


_V1_DTYPE = {oip: v1 for v1, oip in DATATYPE.items()}


def _predict_variant(base: dict[str, Any], datatype: str, specs: list[InputSpec]) -> dict[str, Any]:
    variant = copy.deepcopy(base)
    props = variant["properties"]
    props["dtype"] = props["dtype"] | {"enum": [_V1_DTYPE[datatype]]}
    if datatype != "FP32":  # no dtype means float32
        del props["dtype"]["default"]
        variant["required"] = [*variant["required"], "dtype"]
    batches = [{"type": "array", "minItems": 1, "items": _nested(shape, _leaf(datatype, s))}
               for s in specs for shape in example_shapes(s)]
    # A feature model also takes objects of named numbers (tensors.parse_features).
    batches += [{"type": "array", "minItems": 1, "items": _named(s)} for s in specs if s.kind == "features"]
    props["instances"] = {"description": props["instances"]["description"], "anyOf": _unique(batches)}
    return variant


def _tensor_variant(base: dict[str, Any], datatypes: list[str], specs: list[InputSpec]) -> dict[str, Any]:
    variant = copy.deepcopy(base)
    props = variant["properties"]
    props["datatype"] = props["datatype"] | {"enum": datatypes}
    datatype = datatypes[0]
    longest = max(len(shape) for s in specs for shape in example_shapes(s))
    props["shape"] = props["shape"] | {"minItems": 2, "maxItems": longest + 1}
    # Any even nesting whose element count is the shape's (not expressible: the description says it):
    # flat, with at least one image's values, or nested up to the shape's depth.
    forms = [{"type": "array", "minItems": math.prod(s.shape), "items": _leaf(datatype, s)} for s in specs]
    for depth in range(2, longest + 2):
        forms += [_nested((1,) * depth, _leaf(datatype, s), exact=False) for s in specs]
    props["data"] = {"description": props["data"]["description"], "anyOf": _unique(forms)}
    # The JSON form: data inline; binary_data_size only in the binary form (application/octet-stream).
    variant["required"] = sorted({*variant["required"], "data"})
    props["parameters"] = {"type": "object", "not": {"required": ["binary_data_size"]},
                           "description": "binary_data_size is for the binary form only"}
    return variant


_FLOAT_TYPES = ("FP32", "FP16", "FP64")


def _highest_pixel(datatype: str) -> int:
    return min(255, int(np.iinfo(INTEGERS[datatype]).max))


def _leaf(datatype: str, spec: InputSpec) -> dict[str, Any]:
    if datatype not in _FLOAT_TYPES:
        return {"type": "integer", "minimum": 0, "maximum": _highest_pixel(datatype)}
    low, high = spec.range or (-FLOAT32_MAX, FLOAT32_MAX)  # features: any finite float32
    return {"type": "number", "minimum": low, "maximum": high}


def _named(spec: InputSpec) -> dict[str, Any]:
    """One example of a feature model as an object: every feature, by name, and nothing else."""
    leaf = _leaf("FP32", spec)
    return {"type": "object", "required": list(spec.features), "additionalProperties": False,
            "properties": {name: leaf for name in spec.features}}


def _nested(shape: tuple[int, ...], leaf: dict[str, Any], exact: bool = True) -> dict[str, Any]:
    """Arrays nested as ``shape`` (of exactly those sizes, or else of at least those sizes)."""
    schema = leaf
    for size in reversed(shape):
        schema = {"type": "array", "minItems": size, "items": schema} | ({"maxItems": size} if exact else {})
    return schema


def _unique(schemas_: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return list({json.dumps(s, sort_keys=True): s for s in schemas_}.values())
