"""The application factory: config -> runtime client -> data plane -> blueprints.

The front end (granian or gunicorn) calls ``create_app()`` in each HTTP worker. Workers hold no model and
import no torch: they parse, validate and decode requests and hand arrays to the model runtimes, whose
sockets the launcher (``python -m service``) passes in ``TRAINSERVE_RUNTIME_SOCKETS``.
"""

from __future__ import annotations

import functools
import gc
import io
import logging
import time
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, current_app, g, request

from service.config import ConfigError, ServiceConfig
from service.handoff.client import RuntimeClient
from service.metrics import Metrics
from service.web import encoding, exchange, limits, operability
from service.web.api import docs, feedback, health, kserve, repository, routing, stats, ui, v1, v2
from service.web.api.common import EXTENSION, plane
from service.web.dataplane import DataPlane
from service.web.error_handlers import register_error_handlers
from service.web.figures import INFERENCE_ENDPOINTS

log = logging.getLogger(__name__)


def create_app(test_config: ServiceConfig | Mapping[str, Any] | None = None) -> Flask:
    """Build the app: settings from the environment (fields in ``test_config`` override them)."""
    config = _config(test_config)
    if not config.runtime_paths:
        raise ConfigError("TRAINSERVE_RUNTIME_SOCKETS is not set: start the service with "
                          "`python -m service`, which starts the model runtime and the HTTP server together")
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = config.max_request_bytes
    app.config["MAX_FORM_MEMORY_SIZE"] = config.max_request_bytes
    app.config["MAX_FORM_PARTS"] = limits.MAX_PARTS  # checked first, with its own message (limits.py)
    app.config["TRAINSERVE"] = config
    metrics = Metrics(config.prometheus_multiproc_dir)
    app.extensions[EXTENSION] = DataPlane(RuntimeClient(config.runtime_paths), config, metrics)

    register_error_handlers(app)
    for blueprint in (health.bp, v2.bp, stats.bp, repository.bp, routing.bp, v1.bp, kserve.bp, feedback.bp,
                      docs.bp, ui.bp):
        app.register_blueprint(blueprint)
    app.before_request(_start_clock)
    app.before_request(_check_request)
    app.before_request(_bound_body)
    app.before_request(encoding.decode_body)  # the body as read, bounded, then decoded within the limit
    # after_request hooks run last-registered first: compression sees the final response.
    app.after_request(encoding.compress_response)
    operability.install(app)  # the request id is taken before every other hook
    app.after_request(_count_request)
    app.teardown_request(_request_gone)
    # The app and its imports live as long as the worker: keep the cyclic collector off them.
    gc.collect()
    gc.freeze()
    return app


def _config(test_config: ServiceConfig | Mapping[str, Any] | None) -> ServiceConfig:
    if isinstance(test_config, ServiceConfig):
        return test_config
    return ServiceConfig.from_env().replace(**(test_config or {}))


def _start_clock() -> None:
    # Under the ASGI front end the request arrived, and its body was read, before Flask saw it.
    g.asgi = request.environ.get("asgi.scope", {}).get("trainserve")
    g.arrived = g.asgi["arrived"] if g.asgi else time.monotonic()
    plane().metrics.in_flight.inc()


def _request_gone(exc: BaseException | None) -> None:
    del exc
    if "arrived" in g:
        plane().metrics.in_flight.dec()


def _check_request() -> None:
    """The rules on what precedes the body: one Host, bounded header fields, query parameters given once
    (service/web/limits.py)."""
    environ = request.environ
    limits.check_host(environ.get("SERVER_PROTOCOL", ""), environ.get("HTTP_HOST"))
    limits.check_header_bytes(request.headers.items())
    if environ.get("QUERY_STRING"):
        limits.single_values(request.args.items(multi=True))


def _bound_body() -> None:
    """The one place the body is read from the client, before any handler runs: a declared length over
    the size limit is 413 at once; a body, declared or chunked, is then read here in blocks up to the
    limit (413 beyond) and within the request's deadline (408 past it: a client that trickles its upload
    holds a thread no longer than that), and handed on as a sized in-memory body. (Werkzeug's own limit
    on a chunked body stops at the limit without saying so: the request went on cut.)"""
    if g.asgi:  # read on the event loop (service/web/asgi.py), within the same limits
        if g.asgi["body_error"] is not None:
            raise g.asgi["body_error"]
        return
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    size = request.content_length
    if size is not None and size > limit:
        raise exchange.declared_too_large(size, limit)
    if not size and not request.environ.get("wsgi.input_terminated"):
        return
    wanted = limit + 1 if size is None else size
    timeout_s = current_app.config["TRAINSERVE"].request_timeout_s
    deadline = g.arrived + timeout_s
    # gunicorn hands the app its client socket: a timeout on it ends a read that stalls, not only one that
    # trickles (granian reads in Rust: there the deadline is checked between blocks).
    client = request.environ.get("gunicorn.socket")
    stream, chunks, total = request.environ["wsgi.input"], [], 0
    try:
        while total < wanted:
            if client is not None:
                client.settimeout(max(deadline - time.monotonic(), 0.001))
            if not (chunk := stream.read(min(1 << 16, wanted - total))):
                break
            total += len(chunk)
            chunks.append(chunk)
            if total < wanted and time.monotonic() > deadline:
                raise TimeoutError
    except TimeoutError:
        raise exchange.too_slow(timeout_s, total) from None
    except Exception as exc:  # the front end's reader found the framing broken (gunicorn: a bad chunk)
        raise exchange.malformed_framing(total, type(exc).__name__) from None
    finally:
        if client is not None:
            client.settimeout(None)
    if total > limit:
        raise exchange.over_limit(limit)
    if size is not None and total < size:
        raise exchange.cut_short(total, size)
    request.environ["wsgi.input"] = io.BytesIO(chunks[0] if len(chunks) == 1 else b"".join(chunks))
    request.environ["CONTENT_LENGTH"] = str(total)


def _count_request(response: Response) -> Response:
    endpoint = request.url_rule.endpoint if request.url_rule else "unmatched"
    now = time.monotonic()
    took = now - g.get("arrived", now)
    metrics = plane().metrics
    metrics.request_done(g.get("model", ""), endpoint, response.status_code, took)
    if endpoint in INFERENCE_ENDPOINTS and "version" in g:
        metrics.inference_done(g.model, g.version, response.status_code < 400, took)
    if "routed" in g:
        metrics.routed_done(g.model, g.version, g.routed.role, response.status_code)
        if "followup" in g and response.status_code < 400:
            # Once the server has sent the response and closed it: the client waits for none of it.
            response.call_on_close(functools.partial(plane().followups.answered, g.followup))
    return response
