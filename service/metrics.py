"""Prometheus metrics, correct across gunicorn workers (prometheus_client multiprocess mode).

Under gunicorn, ``PROMETHEUS_MULTIPROC_DIR`` is set (gunicorn.conf.py prepares and wipes it at start-up):
each worker writes its samples to files there and a scrape, whichever worker answers it, builds a fresh
registry that sums every worker's files. Without it (the Flask test client, a single process), each app
keeps its own registry. Labels are bounded: model names and versions come from the registry, endpoints
from the URL rules, statuses from HTTP; never request data.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as prom_mp
from prometheus_client.metrics_core import Metric

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# One answered request: model, endpoint, status, model version (None: not an inference of a known
# version), seconds from arrival.
Done = tuple[str, str, int, str | None, float]
# (model, version, role, status): one request as the routing counts it (routed_done's arguments).
RouteDone = tuple[str, str, str, int]


@dataclass(frozen=True)
class BatchStats:
    """What one batch did, for metrics."""

    rows: int
    requests: int
    queue_wait_s: tuple[float, ...]  # one per request: from queued to the start of its forward pass
    compute_s: float
    failed: bool


@dataclass(frozen=True)
class ExplainStats:
    """What one explanation did, for metrics."""

    method: str
    rows: int
    queue_wait_s: float
    compute_s: float
    status: str  # ok, failed, deadline, refused


_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
PROTOCOLS = ("http", "grpc")  # the doors: the protocol label's only values


class Metrics:
    """The service's metric families, registered in a registry of their own."""

    def __init__(self, multiproc_dir: Path | None) -> None:
        self.multiproc_dir = multiproc_dir
        # In multiprocess mode values live in files, whatever registry the objects are attached to.
        self.registry = CollectorRegistry()
        self._children: dict[tuple[str, str, int, str], tuple[Counter, Histogram]] = {}
        r = self.registry
        # protocol: http or grpc (PROTOCOLS). A gRPC call is counted under the endpoint of its REST twin
        # (ModelInfer: v2.infer) with the HTTP status of the same outcome, so that alerts and dashboards
        # on endpoint and status cover both doors (service/grpc/status.py).
        self.requests = Counter("trainserve_requests",
                                "Requests answered, by model, endpoint, status and protocol",
                                ["model", "endpoint", "status", "protocol"], registry=r)
        self.request_seconds = Histogram("trainserve_request_duration_seconds",
                                         "Time from request arrival to response, by model, endpoint and "
                                         "protocol", ["model", "endpoint", "protocol"],
                                         buckets=_LATENCY_BUCKETS, registry=r)
        # Triton's success/fail statistics per model version (GET /v2/models/stats): the request's whole
        # time in the service, as request_duration_seconds, by outcome (success: a 2xx answer).
        self.inference_seconds = Histogram("trainserve_inference_seconds",
                                           "Inference requests from arrival to answer, by model version and "
                                           "outcome", ["model", "version", "outcome"],
                                           buckets=_LATENCY_BUCKETS, registry=r)
        self.last_inference = Gauge("trainserve_last_inference_timestamp_seconds",
                                    "When the model version last ran a batch (Unix time)",
                                    ["model", "version"],
                                    multiprocess_mode="max", registry=r)
        # Triton counts compute per request (each request of a batch takes the batch's time): the two
        # counters behind compute_infer in GET /v2/models/stats.
        self.computed_requests = Counter("trainserve_computed_requests",
                                         "Requests whose batch ran successfully", ["model", "version"],
                                         registry=r)
        self.computed_request_seconds = Counter("trainserve_computed_request_seconds",
                                                "Forward-pass time, counted once per request of the batch",
                                                ["model", "version"], registry=r)
        self.queue_wait = Histogram("trainserve_queue_wait_seconds",
                                    "Time a request waited in its model's queue before its forward pass",
                                    ["model", "version"], buckets=_LATENCY_BUCKETS, registry=r)
        self.compute = Histogram("trainserve_compute_seconds", "Time of one batched forward pass",
                                 ["model", "version"], buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("trainserve_batch_size_images", "Images in one batched forward pass",
                                    ["model", "version"], buckets=_BATCH_BUCKETS, registry=r)
        self.images = Counter("trainserve_inference_images", "Images run through a model",
                              ["model", "version"], registry=r)
        self.failed_batches = Counter("trainserve_failed_batches", "Batches whose forward pass raised",
                                      ["model", "version"], registry=r)
        self.queue_depth = Gauge("trainserve_queue_depth_requests", "Requests waiting for the model",
                                 ["model", "version"], multiprocess_mode="livesum", registry=r)
        self.in_flight = Gauge("trainserve_requests_in_flight",
                               "Requests the HTTP workers and gRPC front ends hold now (reading, waiting "
                               "for a model, answering)",
                               multiprocess_mode="livesum", registry=r)
        self.load_seconds = Gauge("trainserve_model_load_seconds",
                                  "Time to load, verify and warm up the model, per worker process",
                                  ["model", "version"], multiprocess_mode="liveall", registry=r)
        # Hot reload: a version that failed its checks (the versions already serving keep serving).
        self.load_failures = Counter("trainserve_model_load_failures",
                                     "Artifact versions refused at load (checksum, format, warm-up)",
                                     ["model", "version"], registry=r)
        # Rollouts (service/routing): who answered what, and how the candidates compare with the default.
        self.routed = Counter("trainserve_routed_requests",
                              "Inference requests by the version that answered, its role (default, canary, "
                              "or named in the URL) and outcome (success, rejected: 4xx, error: 5xx)",
                              ["model", "version", "role", "outcome"], registry=r)
        self.predicted = Counter("trainserve_predicted_labels",
                                 "Examples answered, by model version and predicted label (each label a "
                                 "multi-label model predicts)", ["model", "version", "label"], registry=r)
        self.compared = Counter("trainserve_compared_examples",
                                "Examples a canary or shadow version answered beside the default, by "
                                "candidate version, role and outcome (agree: the same label)",
                                ["model", "version", "role", "outcome"], registry=r)
        self.copies = Counter("trainserve_comparison_copies",
                              "Copies of requests for a canary's or shadow's comparison, by candidate "
                              "version, role and outcome (compared, dropped under load, failed)",
                              ["model", "version", "role", "outcome"], registry=r)
        self.rollbacks = Counter("trainserve_canary_rollbacks",
                                 "Canaries stopped by the automatic rollback, by version and the budget they "
                                 "broke (errors, disagreement)", ["model", "version", "reason"], registry=r)
        self._routed_children: dict[tuple[str, str, str, str], Counter] = {}
        # :explain, in its own queue in the runtime (docs/serving.md#explanations); outcome: ok, failed,
        # deadline (504), refused (429 or 400 in the runtime).
        self.explanations = Counter("trainserve_explanations", "Explanations the runtime ended, by outcome",
                                    ["model", "version", "method", "outcome"], registry=r)
        self.explain_rows = Counter("trainserve_explained_rows", "Attribution maps computed (an example and "
                                    "a class each)", ["model", "version", "method"], registry=r)
        self.explain_seconds = Histogram("trainserve_explain_compute_seconds", "Time of one explanation's "
                                         "attribution passes", ["model", "version", "method"],
                                         buckets=_LATENCY_BUCKETS, registry=r)
        self.explain_wait = Histogram("trainserve_explain_queue_wait_seconds", "Time an explanation waited "
                                      "in the runtime's explanation queue", ["model", "version"],
                                      buckets=_LATENCY_BUCKETS, registry=r)
        self.explain_depth = Gauge("trainserve_explain_queue_depth_requests", "Explanations waiting for the "
                                   "model", ["model", "version"], multiprocess_mode="livesum", registry=r)
        # Corrections people sent (POST .../feedback), newly stored: labels come from the model's manifest.
        self.corrections = Counter("trainserve_corrections", "Corrections stored, by model version, "
                                   "predicted and true label", ["model", "version", "predicted", "label"],
                                   registry=r)
        self.model_info = Gauge("trainserve_model_info", "Models and what they are: 1 served, 0 retired",
                                ["model", "version", "architecture", "device", "torch_version"],
                                multiprocess_mode="livemax", registry=r)

    def request_done(self, model: str, endpoint: str, status: int, seconds: float,
                     protocol: str = "http") -> None:
        """Count one answered request and its latency."""
        counter, latency = self._request_children(model, endpoint, status, protocol)
        counter.inc()
        latency.observe(seconds)

    def requests_done(self, done: list[Done], in_flight_change: int, protocol: str = "http") -> None:
        """What ``request_done`` and ``inference_done`` record, for an event loop's requests of one turn:
        counters and the in-flight gauge written once per turn, each latency still observed."""
        counts: dict[tuple[str, str, int], int] = {}
        for model, endpoint, status, _, _ in done:
            counts[model, endpoint, status] = counts.get((model, endpoint, status), 0) + 1
        for (model, endpoint, status), count in counts.items():
            self._request_children(model, endpoint, status, protocol)[0].inc(count)
        for model, endpoint, status, version, seconds in done:
            self._request_children(model, endpoint, status, protocol)[1].observe(seconds)
            if version is not None:
                self.inference_done(model, version, status < 400, seconds)
        if in_flight_change:
            self.in_flight.inc(in_flight_change)

    def _request_children(self, model: str, endpoint: str, status: int, protocol: str) -> tuple[Any, Any]:
        # Label children are looked up once per (model, endpoint, status, protocol): labels() costs a lock
        # and a tuple hash on every call, and the label sets are few (bounded, see the module docstring).
        key = (model, endpoint, status, protocol)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (self.requests.labels(model, endpoint, str(status), protocol),
                                              self.request_seconds.labels(model, endpoint, protocol))
        return children

    def inference_done(self, model: str, version: str, success: bool, seconds: float) -> None:
        """Count one inference request of a known model version, by outcome."""
        self.inference_seconds.labels(model, version, "success" if success else "fail").observe(seconds)

    def routed_done(self, model: str, version: str, role: str, status: int, count: int = 1) -> None:
        """Count inference requests by the version that answered, its role and outcome."""
        outcome = "success" if status < 400 else "rejected" if status < 500 else "error"
        key = (model, version, role, outcome)
        child = self._routed_children.get(key)
        if child is None:
            child = self._routed_children[key] = self.routed.labels(*key)
        child.inc(count)

    def routed_many(self, routed: list[RouteDone]) -> None:
        """``routed_done`` for an event loop's requests of one turn, each counter written once."""
        for key, count in collections.Counter(routed).items():
            self.routed_done(*key, count=count)

    def observer(self, model: str, version: str) -> BatchRecorder:
        """The batcher observer for one model version."""
        return BatchRecorder(self, model, version)

    def render(self) -> bytes:
        """The text exposition of every worker's samples (or this process's, outside gunicorn)."""
        return generate_latest(self._scrape())

    def families(self) -> Iterable[Metric]:
        """The metric families a scrape would show, as prometheus_client objects."""
        return self._scrape().collect()

    def _scrape(self) -> CollectorRegistry:
        if self.multiproc_dir is None:
            return self.registry
        scrape = CollectorRegistry()
        prom_mp.MultiProcessCollector(scrape, path=str(self.multiproc_dir))
        return scrape


class LoopTurnMetrics:
    """What an event loop's requests record, kept over one loop turn and written once at its end through
    ``Metrics.requests_done`` and ``routed_many``: every counter and gauge write is an mmap write under the
    multiprocess mode, too dear to make for each request on a hot path (the HTTP hot path, gRPC)."""

    def __init__(self, metrics: Metrics, protocol: str = "http") -> None:
        self.metrics = metrics
        self.protocol = protocol
        self.done: list[Done] = []  # answered this turn
        self.routed: list[RouteDone] = []  # and their versions and roles (service/routing)
        self._in_flight_change = 0
        self._soon = False

    def count(self, change: int) -> None:
        """A request taken (+1) or let go (-1); the turn's metrics are written at its end."""
        self._in_flight_change += change
        if not self._soon:
            self._soon = True
            asyncio.get_running_loop().call_soon(self._write)

    def _write(self) -> None:
        self._soon = False
        done, self.done = self.done, []
        change, self._in_flight_change = self._in_flight_change, 0
        self.metrics.requests_done(done, change, self.protocol)
        if self.routed:
            routed, self.routed = self.routed, []
            self.metrics.routed_many(routed)


class BatchRecorder:
    """Turns one batcher's measurements into samples (label children resolved once)."""

    def __init__(self, metrics: Metrics, model: str, version: str) -> None:
        self._depth = metrics.queue_depth.labels(model, version)
        self._wait = metrics.queue_wait.labels(model, version)
        self._compute = metrics.compute.labels(model, version)
        self._size = metrics.batch_size.labels(model, version)
        self._images = metrics.images.labels(model, version)
        self._failed = metrics.failed_batches.labels(model, version)
        self._last = metrics.last_inference.labels(model, version)
        self._computed = metrics.computed_requests.labels(model, version)
        self._computed_seconds = metrics.computed_request_seconds.labels(model, version)
        self._metrics, self._model, self._version = metrics, model, version
        self._explain_depth = metrics.explain_depth.labels(model, version)
        self._explain_wait = metrics.explain_wait.labels(model, version)
        self._depth.set(0)

    def queue_depth(self, depth: int) -> None:
        """Current queue length."""
        self._depth.set(depth)

    def batch_done(self, stats: BatchStats) -> None:
        """One batch's size, waits and compute time."""
        for wait in stats.queue_wait_s:
            self._wait.observe(wait)
        self._compute.observe(stats.compute_s)
        self._size.observe(stats.rows)
        self._last.set(time.time())
        if stats.failed:
            self._failed.inc()
        else:
            self._images.inc(stats.rows)
            self._computed.inc(stats.requests)
            self._computed_seconds.inc(stats.compute_s * stats.requests)

    def explain_queue_depth(self, depth: int) -> None:
        """Explanations of this model waiting now."""
        self._explain_depth.set(depth)

    def explained(self, stats: ExplainStats) -> None:
        """One explanation's outcome, rows, wait and compute time."""
        m, model, version = self._metrics, self._model, self._version
        m.explanations.labels(model, version, stats.method, stats.status).inc()
        if stats.status == "ok":
            m.explain_rows.labels(model, version, stats.method).inc(stats.rows)
            m.explain_seconds.labels(model, version, stats.method).observe(stats.compute_s)
        if stats.status != "refused":
            self._explain_wait.observe(stats.queue_wait_s)
