"""The application factory: config -> registry -> data plane -> blueprints.

Gunicorn calls ``create_app()`` in each worker after the fork (no ``--preload``): models, batcher threads
and CUDA state are created in the process that uses them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import torch
from flask import Flask, Response, g, request

from service.allocator import keep_freed_memory
from service.api import docs, health, v1, v2
from service.api.common import EXTENSION, plane
from service.config import ServiceConfig
from service.dataplane import DataPlane
from service.errors import register_error_handlers
from service.metrics import Metrics
from service.registry import load_registry, resolve_device

log = logging.getLogger(__name__)


def create_app(test_config: ServiceConfig | Mapping[str, Any] | None = None) -> Flask:
    """Build the app: settings from the environment (fields in ``test_config`` override them)."""
    config = _config(test_config)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = config.max_request_bytes
    app.config["MAX_FORM_MEMORY_SIZE"] = config.max_request_bytes
    app.config["TRAINSERVE"] = config

    torch.set_num_threads(config.torch_thread_count)
    keep_freed_memory()  # batches reuse the memory the last one freed (service/allocator.py)
    device = resolve_device(config.device, config.half)
    registry = load_registry(config.model_dir, device, config.half, warmup_batch=config.max_batch_size)
    metrics = Metrics(config.prometheus_multiproc_dir)
    app.extensions[EXTENSION] = DataPlane(registry, config, metrics).start()

    register_error_handlers(app)
    for blueprint in (health.bp, v2.bp, v1.bp, docs.bp):
        app.register_blueprint(blueprint)
    app.before_request(_start_clock)
    app.after_request(_count_request)
    log.info("serving %s on %s with %d torch threads", ", ".join(m.key for m in registry), device,
             torch.get_num_threads())
    return app


def _config(test_config: ServiceConfig | Mapping[str, Any] | None) -> ServiceConfig:
    if isinstance(test_config, ServiceConfig):
        return test_config
    return ServiceConfig.from_env().replace(**(test_config or {}))


def _start_clock() -> None:
    g.arrived = time.monotonic()


def _count_request(response: Response) -> Response:
    endpoint = request.url_rule.endpoint if request.url_rule else "unmatched"
    now = time.monotonic()
    plane().metrics.request_done(g.get("model", ""), endpoint, response.status_code,
                                 now - g.get("arrived", now))
    return response
