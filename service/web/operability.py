"""Per-request plumbing every route shares: the request id, the access log and CORS.

``X-Request-ID`` is taken from the request when it is a bounded string of safe characters (a proxy's or
the client's id, so one id follows a request through every hop) and generated otherwise; it is returned on
every response and set in ``service.logs.request_id`` so that every log line of the request carries it.
"""

from __future__ import annotations

import logging
import os
import re
import time

from flask import Flask, Response, current_app, g, request

from service.errors import Forbidden
from service.logs import request_id

HEADER = "X-Request-ID"
# Letters, digits and a few separators, up to 128: enough for UUIDs and tracing ids, nothing that could
# forge a log line or a header.
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")
# What a browser may send and read on a cross-origin call (the binary extension's header included).
_ALLOWED_HEADERS = ("Content-Type, Content-Encoding, Authorization, Inference-Header-Content-Length, "
                    "X-Request-ID")
_EXPOSED_HEADERS = "X-Request-ID, Inference-Header-Content-Length, Retry-After"
_PREFLIGHT_MAX_AGE = "600"

access = logging.getLogger("service.access")


def install(app: Flask) -> None:
    """Register the request id (first of all hooks), CORS and the access log on ``app``."""
    app.before_request_funcs.setdefault(None, []).insert(0, _take_request_id)
    app.after_request(_headers)
    app.teardown_request(_forget_request_id)


def take_request_id(given: str) -> str:
    """The request's id: the client's or proxy's when it is safe to echo, else a new one."""
    return given if _SAFE_ID.match(given) else os.urandom(16).hex()  # uuid4's randomness, cheaper


def cors_headers(origin: str | None, origins: list[str]) -> dict[str, str]:
    """The CORS headers of an answer to a request from ``origin`` (none when it sent no Origin or the origin
    is not allowed); the Vary they need comes apart, as "Origin" in the second value."""
    if origin is None or (allowed := allowed_origin(origin, origins)) is None:
        return {}
    headers = {"Access-Control-Allow-Origin": allowed, "Access-Control-Expose-Headers": _EXPOSED_HEADERS}
    if allowed != "*":
        headers["Vary"] = "Origin"
    return headers


def allowed_origin(origin: str, origins: list[str]) -> str | None:
    """The Access-Control-Allow-Origin for ``origin``, or None when it may not call."""
    if "*" in origins:
        return "*"
    return origin if origin and origin in origins else None


def log_access(method: str, path: str, status: int, length: int | None, took_ms: float) -> None:
    """One access-log line."""
    # The query string is left out: it may carry what the client did not mean to have logged. The path is
    # decoded (%0A is a newline): control characters are escaped so that it cannot forge a line.
    safe_path = path[:300].encode("unicode_escape").decode("ascii")
    access.info("%s %s %d %s %.1fms", method[:16], safe_path, status, length if length is not None else "-",
                took_ms)


def _take_request_id() -> Response | None:
    g.request_id = take_request_id(request.headers.get(HEADER, ""))
    g.request_id_token = request_id.set(g.request_id)
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        return _preflight()
    return None


def _preflight() -> Response:
    """Answer a CORS preflight: 204 with the allowed methods and headers, 403 for another origin."""
    origin = request.headers.get("Origin", "")
    allowed = allowed_origin(origin, current_app.config["TRAINSERVE"].cors_origin_list)
    if allowed is None:
        raise Forbidden(f"origin {origin[:200]!r} may not call this service (TRAINSERVE_CORS_ORIGINS)")
    response = Response(status=204)
    response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
    response.headers["Access-Control-Allow-Headers"] = _ALLOWED_HEADERS
    response.headers["Access-Control-Max-Age"] = _PREFLIGHT_MAX_AGE
    return response


def _headers(response: Response) -> Response:
    rid = g.get("request_id")
    if rid is not None:
        response.headers[HEADER] = rid
    config = current_app.config["TRAINSERVE"]
    for name, value in cors_headers(request.headers.get("Origin"), config.cors_origin_list).items():
        if name == "Vary":
            response.vary.add(value)
        else:
            response.headers[name] = value
    if config.access_log:
        took_ms = (time.monotonic() - g.get("arrived", time.monotonic())) * 1000
        log_access(request.method, request.path, response.status_code, response.content_length, took_ms)
    return response


def _forget_request_id(exc: BaseException | None) -> None:
    del exc
    token = g.pop("request_id_token", None)
    if token is not None:
        request_id.reset(token)
