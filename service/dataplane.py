"""The data plane: models, their batchers and readiness, behind a small API the HTTP layer calls.

The HTTP layer hands it validated arrays and gets logits back; it never touches tensors. The data plane
never sees HTTP: it raises typed ServiceErrors that errors.py maps to statuses.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from service.batching import Batcher
from service.config import ServiceConfig
from service.errors import NotReady
from service.inference import OUTPUTS
from service.metrics import Metrics
from service.registry import LoadedModel, Registry

log = logging.getLogger(__name__)


class DataPlane:
    """Serves a registry's models through one batcher each, in this worker process."""

    def __init__(self, registry: Registry, config: ServiceConfig, metrics: Metrics) -> None:
        self.registry = registry
        self.config = config
        self.metrics = metrics
        self.batchers: dict[str, Batcher] = {}
        self.draining = False

    def start(self) -> DataPlane:
        """Start every model's batcher and publish the model metrics; afterwards the plane is ready."""
        for model in self.registry:
            m = model.manifest
            self.batchers[model.key] = Batcher(
                model.forward, model.key, self.config.max_batch_size, self.config.max_batch_delay_ms / 1000,
                self.config.max_queue, self.metrics.observer(m.name, m.version)).start()
            self.metrics.load_seconds.labels(m.name, m.version).set(model.load_seconds)
            self.metrics.model_info.labels(m.name, m.version, m.architecture, str(model.device),
                                           m.torch_version).set(1)
        return self

    @property
    def ready(self) -> bool:
        """True when every model's batcher runs and no shutdown has begun."""
        return not self.draining and bool(self.batchers) and all(b.running for b in self.batchers.values())

    def model(self, name: str, version: str | None = None) -> LoadedModel:
        """The model a request addresses (ModelNotFound when there is none)."""
        return self.registry.get(name, version)

    def model_ready(self, model: LoadedModel) -> bool:
        """Whether this model version takes requests now."""
        batcher = self.batchers.get(model.key)
        return not self.draining and batcher is not None and batcher.running

    def infer(self, model: LoadedModel, inputs: np.ndarray, arrived: float) -> np.ndarray:
        """Logits [N, classes] for ``inputs`` [N, *shape]; the deadline counts from ``arrived``.

        Draining does not refuse requests: gunicorn stops accepting connections, and those it has already
        read are in flight and finish. Only a closed batcher refuses (NotReady).
        """
        batcher = self.batchers.get(model.key)
        if batcher is None:
            raise NotReady(f"model {model.key} is not ready")
        return batcher.submit(inputs, arrived + self.config.request_timeout_s)

    def begin_drain(self) -> None:
        """SIGTERM: stop reporting ready; requests already queued still run."""
        if not self.draining:
            log.info("draining: readiness off, finishing queued requests")
        self.draining = True

    def close(self, timeout: float | None = None) -> None:
        """Finish what is queued and stop every batcher."""
        self.draining = True
        deadline = None if timeout is None else time.monotonic() + timeout
        for batcher in self.batchers.values():
            batcher.close(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def metadata(self, model: LoadedModel) -> dict[str, Any]:
        """OIP model metadata: the real input and output tensors (-1: any batch size)."""
        m = model.manifest
        datatypes = ["FP32", "UINT8"] if m.input.accepts_uint8 else ["FP32"]
        versions = sorted(self.registry.models[m.name], key=int)
        return {
            "name": m.name,
            "versions": versions,
            "platform": "pytorch_torchscript",
            "inputs": [{"name": m.input.name, "datatype": "FP32", "shape": [-1, *m.input.shape],
                        "parameters": {"datatypes": datatypes, "range": list(m.input.range)}}],
            "outputs": [
                {"name": OUTPUTS[0], "datatype": "FP32", "shape": [-1, m.num_classes]},
                {"name": OUTPUTS[1], "datatype": "FP32", "shape": [-1, m.num_classes]},
                {"name": OUTPUTS[2], "datatype": "BYTES", "shape": [-1]},
            ],
            "parameters": {"version": m.version, "architecture": m.architecture, "labels": list(m.labels),
                           "device": str(model.device), "test_accuracy": m.metrics.get("test_accuracy")},
        }
