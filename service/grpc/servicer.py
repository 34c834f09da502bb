"""``inference.GRPCInferenceService``: each method does what its HTTP twin does, with the same functions.

Inference goes to the model runtimes through the loop's ``GroupingClient``, as the HTTP hot path's does
(``web/hot.py``), so gRPC and HTTP requests share batches; everything else (metadata, configuration,
statistics, the repository) is built by the functions the Flask routes call and encoded as protobuf. A
method holds only what is gRPC's own: reading the message, encoding the answer, the status code.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import numpy as np
from google.protobuf import json_format

from service.config import ServiceConfig
from service.errors import ModelNotFound, NotReady, NotSupported, ServiceError
from service.grpc import messages, status
from service.grpc.proto import grpc_service_pb2 as pb
from service.grpc.proto import grpc_service_pb2_grpc as pb_grpc
from service.grpc.proto import model_config_pb2
from service.handoff import protocol
from service.handoff.catalog import ServedModel
from service.handoff.client import RuntimeClient
from service.handoff.grouping import GroupingClient
from service.logs import request_id as request_id_var
from service.metrics import LoopTurnMetrics, Metrics
from service.routing import split
from service.web import exchange, management, operability
from service.web.api.v2 import SERVER
from service.web.dataplane import model_metadata
from service.web.error_handlers import log_error, log_unexpected
from service.web.triton import model_config, repository_index, statistics

T = TypeVar("T")
SERVICE = "inference.GRPCInferenceService"
# Requests of one ModelStreamInfer call in flight at once (answered in order; the next wait to be read).
STREAM_WINDOW = 64
# Messages up to this size are decoded on the loop; larger ones in the decoder pool (web/hot.py's rule).
INLINE_BYTES = 64 * 1024
_DECODERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="grpc-decode")
# Triton's methods this service has nothing behind (no shared memory, tracing or log settings over RPC).
UNSUPPORTED = ("SystemSharedMemoryStatus", "SystemSharedMemoryRegister", "SystemSharedMemoryUnregister",
               "CudaSharedMemoryStatus", "CudaSharedMemoryRegister", "CudaSharedMemoryUnregister",
               "TraceSetting", "LogSettings")
CLIENT_KEY = split.CLIENT_HEADER.lower()  # gRPC metadata keys are lower case


@dataclass(slots=True)
class Call:
    """One request: what the metrics, the log and the answer need."""

    arrived: float
    request_id: str
    method: str
    endpoint: str  # the Flask endpoint of the REST twin: the metrics' label
    model: str = ""
    version: str | None = None
    deadline: float | None = None  # the client's own, when it set one (time.monotonic())
    client_key: str | None = None  # x-client-id metadata: a canary split keeps a client on one version


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The service's methods (module docstring)."""

    def __init__(self, config: ServiceConfig, client: GroupingClient, control: RuntimeClient,
                 metrics: Metrics) -> None:
        self.config = config
        self.client = client  # inference and the catalog, on this loop
        self.control = control  # pings, load and unload, in threads
        self.metrics = metrics
        self.draining = False
        self.turn = LoopTurnMetrics(metrics, "grpc")  # a loop turn's calls, written once at its end

    async def ready(self) -> bool:
        """Every runtime answers and is not draining, and neither is this process."""
        return not self.draining and await asyncio.to_thread(self.control.ready)

    # --- the frame of every method ----------------------------------------------------------------------
    def _call(self, context: grpc.aio.ServicerContext, method: str, endpoint: str) -> Call:
        now = time.monotonic()
        given, client_key = "", None
        for key, value in context.invocation_metadata() or ():
            if isinstance(value, bytes):  # a binary ("-bin") key: neither of these
                continue
            if key == status.REQUEST_ID:
                given = value
            elif key == CLIENT_KEY:
                client_key = value
        left = context.time_remaining()
        return Call(now, operability.take_request_id(given), method, endpoint,
                    deadline=None if left is None else now + left, client_key=client_key)

    async def _answer(self, context: grpc.aio.ServicerContext, method: str, endpoint: str,
                      work: Callable[[Call], Awaitable[T]]) -> T:
        call = self._call(context, method, endpoint)
        outcome = await self._run(call, work)
        if not isinstance(outcome, ServiceError):
            context.set_trailing_metadata(status.trailers(call.request_id))
            return outcome
        await context.abort(status.code_for(outcome.status), outcome.message,
                            status.trailers(call.request_id, outcome))
        raise AssertionError("unreachable: abort raises")

    async def _run(self, call: Call, work: Callable[[Call], Awaitable[T]]) -> T | ServiceError:
        """The reply, or the failure that took its place (logged and counted here, as every answer is)."""
        token = request_id_var.set(call.request_id)
        outcome: T | ServiceError
        self.turn.count(1)  # the gauge HTTP's requests count in: what the front ends hold now
        try:
            outcome = await work(call)
        except ServiceError as exc:
            log_error(exc)
            outcome = exc
        except Exception:
            log_unexpected()
            outcome = ServiceError("internal server error")
        finally:
            request_id_var.reset(token)
            self.turn.count(-1)
        took = time.monotonic() - call.arrived
        code = outcome.status if isinstance(outcome, ServiceError) else 200
        self.turn.done.append((call.model, call.endpoint, code,
                               call.version if call.endpoint == "v2.infer" else None, took))
        if self.config.access_log:
            operability.log_access("GRPC", f"/{SERVICE}/{call.method}", code, None, took * 1000)
        return outcome

    async def _model(self, call: Call, name: str, version: str) -> ServedModel:
        found = (await self.client.catalog()).get(name, version or None)
        call.model, call.version = name, found.manifest.version
        return found

    # --- health and metadata -----------------------------------------------------------------------------
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        """The process answers."""
        async def work(call: Call) -> pb.ServerLiveResponse:
            return pb.ServerLiveResponse(live=True)
        return await self._answer(context, "ServerLive", "v2.live", work)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        """Every model can take requests (false, not an error, while starting or draining: as Triton)."""
        async def work(call: Call) -> pb.ServerReadyResponse:
            return pb.ServerReadyResponse(ready=await self.ready())
        return await self._answer(context, "ServerReady", "v2.ready", work)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        """Whether a model version takes requests now (false for one that is not served: as Triton)."""
        async def work(call: Call) -> pb.ModelReadyResponse:
            try:
                found = await self._model(call, request.name, request.version)
            except (ModelNotFound, NotReady):
                return pb.ModelReadyResponse(ready=False)
            served = (await self.client.catalog()).serves(found.key)
            return pb.ModelReadyResponse(ready=served and await self.ready())
        return await self._answer(context, "ModelReady", "v2.model_ready", work)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest,
                             context: Any) -> pb.ServerMetadataResponse:
        """Server name, version and protocol extensions."""
        async def work(call: Call) -> pb.ServerMetadataResponse:
            return pb.ServerMetadataResponse(**SERVER)
        return await self._answer(context, "ServerMetadata", "v2.server_metadata", work)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        """Inputs, outputs and versions of a model."""
        async def work(call: Call) -> pb.ModelMetadataResponse:
            found = await self._model(call, request.name, request.version)
            meta = model_metadata(found, await self.client.catalog(), self.config)
            tensor = pb.ModelMetadataResponse.TensorMetadata
            return pb.ModelMetadataResponse(
                name=meta["name"], versions=meta["versions"], platform=meta["platform"],
                inputs=[tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"])
                        for t in meta["inputs"]],
                outputs=[tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"])
                         for t in meta["outputs"]])
        return await self._answer(context, "ModelMetadata", "v2.model_metadata", work)

    # --- inference ---------------------------------------------------------------------------------------
    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        """One inference request: raw or typed input contents, raw output contents."""
        return await self._answer(context, "ModelInfer", "v2.infer", lambda call: self._infer(call, request))

    async def ModelStreamInfer(self, requests: AsyncIterator[pb.ModelInferRequest],
                               context: Any) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """A stream of requests, one answer each, in order; an error is an answer with its message (as
        Triton's), and the stream goes on. Up to STREAM_WINDOW requests run at once."""
        first = self._call(context, "ModelStreamInfer", "v2.infer")
        answers: asyncio.Queue[asyncio.Future[pb.ModelStreamInferResponse] | None] = asyncio.Queue()
        window = asyncio.Semaphore(STREAM_WINDOW)

        async def read() -> None:
            try:
                async for request in requests:
                    await window.acquire()
                    call = Call(time.monotonic(), first.request_id, first.method, first.endpoint,
                                deadline=first.deadline, client_key=first.client_key)
                    answers.put_nowait(asyncio.ensure_future(self._streamed(call, request)))
            finally:
                answers.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (answer := await answers.get()) is not None:
                yield await answer
                window.release()
            await reader  # a failed read (the client went away) ends the call
        finally:
            reader.cancel()
            while not answers.empty():
                if (left := answers.get_nowait()) is not None:
                    left.cancel()
        context.set_trailing_metadata(status.trailers(first.request_id))

    async def _streamed(self, call: Call, request: pb.ModelInferRequest) -> pb.ModelStreamInferResponse:
        outcome = await self._run(call, lambda c: self._infer(c, request))
        if not isinstance(outcome, ServiceError):
            return pb.ModelStreamInferResponse(infer_response=outcome)
        echo = pb.ModelInferResponse(model_name=request.model_name, model_version=request.model_version,
                                     id=request.id)
        return pb.ModelStreamInferResponse(error_message=outcome.message, infer_response=echo)

    async def _infer(self, call: Call, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        # The same split as HTTP: a canary's share of default-addressed calls goes to the canary (shadow
        # copies are HTTP's alone: docs/operations.md#rollouts).
        routed = split.resolve(await self.client.catalog(), request.model_name, request.model_version or None,
                               call.client_key)
        found = routed.model
        call.model, call.version = request.model_name, found.manifest.version
        if request.ByteSize() <= INLINE_BYTES:
            body, inputs, threshold = _inputs(found, request)
        else:
            body, inputs, threshold = await asyncio.get_running_loop().run_in_executor(
                _DECODERS, _inputs, found, request)
        deadline = call.arrived + self.config.request_timeout_s
        if call.deadline is not None:
            deadline = min(deadline, call.deadline)
        logits = exchange.finite(await self.client.infer(found, inputs, deadline))
        return messages.infer_response(exchange.infer_document(found, body, logits, threshold))

    # --- Triton's extensions -----------------------------------------------------------------------------
    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:
        """Batch size, inputs, outputs, batching and queue settings, in Triton's model configuration."""
        async def work(call: Call) -> pb.ModelConfigResponse:
            found = await self._model(call, request.name, request.version)
            document = model_config(found, await self.client.catalog(), self.config)
            config = json_format.ParseDict(document, model_config_pb2.ModelConfig())
            return pb.ModelConfigResponse(config=config)
        return await self._answer(context, "ModelConfig", "stats.config", work)

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest,
                              context: Any) -> pb.ModelStatisticsResponse:
        """Statistics of every served model version, of one model's versions, or of one version."""
        async def work(call: Call) -> pb.ModelStatisticsResponse:
            catalog = await self.client.catalog()
            if not request.name:
                served = list(catalog)
            else:
                found = await self._model(call, request.name, request.version)
                served = ([found] if request.version else
                          [m for m in catalog if m.manifest.name == found.manifest.name])
            families = await asyncio.to_thread(lambda: list(self.metrics.families()))
            return json_format.ParseDict(statistics(families, served), pb.ModelStatisticsResponse())
        endpoint = "stats.model_stats" if request.name else "stats.all_stats"
        return await self._answer(context, "ModelStatistics", endpoint, work)

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest,
                              context: Any) -> pb.RepositoryIndexResponse:
        """Every model version in the repository: READY when served, UNAVAILABLE (with why) when not."""
        async def work(call: Call) -> pb.RepositoryIndexResponse:
            self._authorize(context)
            catalog = await self.client.catalog()
            index = await asyncio.to_thread(repository_index, self.config, catalog, request.ready)
            entry = pb.RepositoryIndexResponse.ModelIndex
            return pb.RepositoryIndexResponse(models=[entry(**m) for m in index])
        return await self._answer(context, "RepositoryIndex", "repository.index", work)

    async def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest,
                                  context: Any) -> pb.RepositoryModelLoadResponse:
        """Load (or reload) the versions of a model the version policy selects, on every runtime."""
        async def work(call: Call) -> pb.RepositoryModelLoadResponse:
            self._authorize(context)
            management.check_load_parameters(request.parameters.keys())
            await self._control(protocol.LOAD, _model_name(request))
            return pb.RepositoryModelLoadResponse()
        return await self._answer(context, "RepositoryModelLoad", "repository.load", work)

    async def RepositoryModelUnload(self, request: pb.RepositoryModelUnloadRequest,
                                    context: Any) -> pb.RepositoryModelUnloadResponse:
        """Stop serving every version of a model (requests already sent to it finish first)."""
        async def work(call: Call) -> pb.RepositoryModelUnloadResponse:
            self._authorize(context)
            await self._control(protocol.UNLOAD, _model_name(request))
            return pb.RepositoryModelUnloadResponse()
        return await self._answer(context, "RepositoryModelUnload", "repository.unload", work)

    def _authorize(self, context: Any) -> None:
        given = dict(context.invocation_metadata() or ()).get("authorization", "")
        management.authorize(self.config.management_token, given)

    async def _control(self, kind: int, name: str) -> None:
        management.check_control(self.config, name)
        deadline = time.monotonic() + max(management.LOAD_SECONDS, self.config.request_timeout_s)
        await asyncio.to_thread(self.control.control, kind, name, deadline)


def _model_name(request: pb.RepositoryModelLoadRequest | pb.RepositoryModelUnloadRequest) -> str:
    # KServe's grpc_predict_v2.proto numbers model_name 1, where Triton's has repository_name (this service
    # has one repository): a KServe client's name arrives there.
    return request.model_name or request.repository_name


def _inputs(found: ServedModel, request: pb.ModelInferRequest) -> tuple[dict[str, Any], np.ndarray, float]:
    body = messages.infer_request(request)
    inputs, threshold = exchange.infer_inputs(found, body)
    return body, inputs, threshold


def _unsupported(method: str) -> Callable[..., Awaitable[Any]]:
    async def handler(self: InferenceServicer, request: Any, context: Any) -> Any:
        async def work(call: Call) -> Any:
            raise NotSupported(f"{method} is not supported by this service (Triton's shared memory, trace "
                               "and log extensions are not implemented): send tensors in the request")
        return await self._answer(context, method, "unmatched", work)
    handler.__name__ = handler.__qualname__ = method
    handler.__doc__ = f"{method}: UNIMPLEMENTED."
    return handler


for _method in UNSUPPORTED:
    setattr(InferenceServicer, _method, _unsupported(_method))
