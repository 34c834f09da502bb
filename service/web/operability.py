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


def _take_request_id() -> Response | None:
    given = request.headers.get(HEADER, "")
    g.request_id = given if _SAFE_ID.match(given) else os.urandom(16).hex()  # uuid4's randomness, cheaper
    g.request_id_token = request_id.set(g.request_id)
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        return _preflight()
    return None


def _preflight() -> Response:
    """Answer a CORS preflight: 204 with the allowed methods and headers, 403 for another origin."""
    origin = request.headers.get("Origin", "")
    allowed = _allowed_origin(origin)
    if allowed is None:
        raise Forbidden(f"origin {origin[:200]!r} may not call this service (TRAINSERVE_CORS_ORIGINS)")
    response = Response(status=204)
    response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
    response.headers["Access-Control-Allow-Headers"] = _ALLOWED_HEADERS
    response.headers["Access-Control-Max-Age"] = _PREFLIGHT_MAX_AGE
    return response


def _allowed_origin(origin: str) -> str | None:
    origins = current_app.config["TRAINSERVE"].cors_origin_list
    if "*" in origins:
        return "*"
    return origin if origin and origin in origins else None


def _headers(response: Response) -> Response:
    rid = g.get("request_id")
    if rid is not None:
        response.headers[HEADER] = rid
    origin = request.headers.get("Origin")
    if origin is not None and (allowed := _allowed_origin(origin)) is not None:
        response.headers["Access-Control-Allow-Origin"] = allowed
        response.headers["Access-Control-Expose-Headers"] = _EXPOSED_HEADERS
        if allowed != "*":
            response.vary.add("Origin")
    if current_app.config["TRAINSERVE"].access_log:
        _log_access(response)
    return response


def _log_access(response: Response) -> None:
    took_ms = (time.monotonic() - g.get("arrived", time.monotonic())) * 1000
    # The query string is left out: it may carry what the client did not mean to have logged. The path is
    # decoded (%0A is a newline): control characters are escaped so that it cannot forge a line.
    path = request.path[:300].encode("unicode_escape").decode("ascii")
    access.info("%s %s %d %s %.1fms", request.method[:16], path, response.status_code,
                response.content_length if response.content_length is not None else "-", took_ms)


def _forget_request_id(exc: BaseException | None) -> None:
    del exc
    token = g.pop("request_id_token", None)
    if token is not None:
        request_id.reset(token)
