"""``python -m service.grpc``: one gRPC front-end process (the launcher starts ``TRAINSERVE_GRPC_WORKERS``
of them on ``TRAINSERVE_GRPC_BIND``; they share the port through SO_REUSEPORT, as grpc sets it).

grpc.aio on the default asyncio event loop (docs/architecture.md says why this stack): the
``inference.GRPCInferenceService`` servicer, the standard health service (``grpc.health.v1``: "" and the
service's name follow readiness, ``liveness`` is SERVING while the process answers) and server reflection.
Messages are limited to TRAINSERVE_MAX_REQUEST_BYTES, as HTTP bodies are. SIGTERM drains: readiness turns
off, new calls are refused, the calls in flight get TRAINSERVE_GRACEFUL_TIMEOUT_S to finish.
"""

from __future__ import annotations

import asyncio
import logging
import logging.config
import signal
import sys

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from service.config import ServiceConfig, start_process
from service.grpc.proto import _pool
from service.grpc.proto import grpc_service_pb2_grpc as pb_grpc
from service.grpc.servicer import SERVICE, InferenceServicer
from service.handoff.client import RuntimeClient
from service.handoff.grouping import GroupingClient
from service.metrics import Metrics

log = logging.getLogger(__name__)

LIVENESS = "liveness"  # the health service's name for "the process answers" (Kubernetes liveness probes)
# How often the health service's readiness is refreshed (a ping of each runtime).
HEALTH_INTERVAL_S = 1.0
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def server_options(config: ServiceConfig) -> list[tuple[str, int]]:
    """The channel arguments of the server: REST's size limit on a message (its decoded size, too)."""
    return [("grpc.max_receive_message_length", config.max_request_bytes), ("grpc.so_reuseport", 1)]


async def serve(config: ServiceConfig) -> int:
    """Serve on ``config.grpc_bind`` until SIGTERM or SIGINT; the exit status."""
    server = grpc.aio.server(options=server_options(config))
    metrics = Metrics(config.prometheus_multiproc_dir)
    # The HTTP hot path's limits (web/asgi.py): an overload is shed here, 429 as RESOURCE_EXHAUSTED.
    client = GroupingClient(config.runtime_paths, max_waiting=config.max_queue)
    servicer = InferenceServicer(config, client, RuntimeClient(config.runtime_paths), metrics)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    checks = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    for descriptor in (health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR):  # listed beside the service
        _pool.POOL.AddSerializedFile(descriptor.serialized_pb)
    reflection.enable_server_reflection([SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME], server,
                                        pool=_pool.POOL)
    try:
        server.add_insecure_port(config.grpc_bind)
    except RuntimeError as exc:
        log.error("cannot listen on TRAINSERVE_GRPC_BIND=%s: %s", config.grpc_bind, exc)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await server.start()
    await checks.set(LIVENESS, _SERVING)
    watcher = asyncio.create_task(_follow_readiness(servicer, checks))
    log.info("gRPC serving %s on %s", SERVICE, config.grpc_bind)
    await stop.wait()
    log.info("gRPC draining: %d s for the calls in flight", config.graceful_timeout_s)
    servicer.draining = True
    watcher.cancel()
    await checks.enter_graceful_shutdown()
    await server.stop(config.graceful_timeout_s)
    servicer.client.close()
    servicer.control.close()
    return 0


async def _follow_readiness(servicer: InferenceServicer, checks: health.aio.HealthServicer) -> None:
    """Keep the health service's "" and the service's status at the service's readiness."""
    while True:
        state = _SERVING if await servicer.ready() else _NOT_SERVING
        for name in ("", SERVICE):
            await checks.set(name, state)
        await asyncio.sleep(HEALTH_INTERVAL_S)


def main() -> int:
    """Entry point of ``python -m service.grpc`` (the launcher sets TRAINSERVE_RUNTIME_SOCKETS)."""
    config = start_process()
    if config is None:
        return 2
    if not config.runtime_paths or config.grpc_bind == "off":
        print("trainserve: the gRPC front end needs TRAINSERVE_RUNTIME_SOCKETS and TRAINSERVE_GRPC_BIND: "
              "start the service with `python -m service`", file=sys.stderr)
        return 2
    return asyncio.run(serve(config))
