"""The hot routes: inference requests served on the worker's event loop (``web/asgi.py`` dispatches).

Each handler does what its Flask twin in ``api/v1.py`` or ``api/v2.py`` does, with the same functions
(``web/exchange.py``), and awaits the runtime instead of blocking a thread. A body small enough is decoded
on the loop (a 28x28 PNG costs less than any hand-off); a larger one in the decoder pool, so that one big
image never stalls every other request of the worker.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from service.handoff.catalog import ServedModel
from service.routing import split
from service.web import binary, exchange
from service.web.followups import Followup

if TYPE_CHECKING:
    from service.web.asgi import HotPath

T = TypeVar("T")

# Bodies up to this size are decoded on the loop; larger ones in the decoder pool.
INLINE_BYTES = 64 * 1024
_DECODERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="decode")


@dataclass(slots=True)
class Call:
    """One hot request: what its handler and the answer's writer need."""

    headers: dict[str, str]
    arrived: float
    request_id: str
    endpoint: str  # the Flask endpoint of the same route: the metrics' label
    path: str = ""
    body: bytes | bytearray = b""
    model: str = ""  # once the addressed model is known to exist (metrics)
    version: str | None = None
    routed: split.Routed | None = None  # which version answers, in which role (service/routing/split.py)
    followup: Followup | None = None  # what runs after the answer (web/followups.py)

    @property
    def mimetype(self) -> str:
        """The content type without its parameters, lower case (as werkzeug's ``request.mimetype``)."""
        return self.headers.get("content-type", "").partition(";")[0].strip().lower()


async def _model(app: HotPath, call: Call, name: str, version: str | None) -> ServedModel:
    routed = split.resolve(await app.client.catalog(), name, version, call.headers.get("x-client-id"))
    call.model, call.version, call.routed = name, routed.model.manifest.version, routed
    return routed.model


async def _prepare(call: Call, work: Callable[..., T], *args: Any) -> T:
    """``work(*args)`` on the loop for a small body, in the decoder pool for a large one."""
    if len(call.body) <= INLINE_BYTES:
        return work(*args)
    return await asyncio.get_running_loop().run_in_executor(_DECODERS, work, *args)


async def _logits(app: HotPath, call: Call, found: ServedModel, inputs: np.ndarray) -> np.ndarray:
    deadline = call.arrived + app.config.request_timeout_s
    logits = exchange.finite(await app.client.infer(found, inputs, deadline))
    assert call.routed is not None
    call.followup = Followup(call.routed, inputs, logits)
    return logits


def _images(found: ServedModel, mimetype: str, body: bytes | bytearray) -> np.ndarray:
    exchange.image_model(found)
    exchange.image_type(mimetype)
    return exchange.image_inputs(found, [body])


async def classify(app: HotPath, call: Call, name: str, version: str | None = None) -> exchange.Answer:
    """POST /v1/models/{name}[/versions/{v}]:classify with an image as the body."""
    found = await _model(app, call, name, version)
    inputs = await _prepare(call, _images, found, call.mimetype, call.body)
    return exchange.predictions_answer(found, await _logits(app, call, found, inputs), None)


async def predict(app: HotPath, call: Call, name: str, version: str | None = None) -> exchange.Answer:
    """POST /v1/models/{name}[/versions/{v}]:predict."""
    found = await _model(app, call, name, version)
    body, inputs = await _prepare(call, _predict_inputs, found, call.mimetype, call.body,
                                  app.config.max_json_bytes)
    logits = await _logits(app, call, found, inputs)
    return exchange.predictions_answer(found, logits, body["top_k"], body["threshold"], plain=body["plain"])


def _predict_inputs(found: ServedModel, mimetype: str, raw: bytes | bytearray,
                    limit: int) -> tuple[dict[str, Any], np.ndarray]:
    body = exchange.predict_request(mimetype, raw, limit)
    return body, exchange.predict_inputs(found, body)


async def infer(app: HotPath, call: Call, name: str, version: str | None = None) -> exchange.Answer:
    """POST /v2/models/{name}[/versions/{v}]/infer, JSON or binary tensors."""
    found = await _model(app, call, name, version)
    body, inputs, threshold = await _prepare(call, _infer_inputs, found, version, call.mimetype,
                                             call.headers.get(binary.HEADER.lower()), call.body,
                                             app.config.max_json_bytes)
    logits = await _logits(app, call, found, inputs)
    return exchange.infer_answer(found, body, logits, threshold)


def _infer_inputs(found: ServedModel, version: str | None, mimetype: str, header_length: str | None,
                  raw: bytes | bytearray, limit: int) -> tuple[dict[str, Any], np.ndarray, float]:
    body = exchange.infer_request(mimetype, header_length, raw, limit)
    exchange.check_named(body, found, version)
    inputs, threshold = exchange.infer_inputs(found, body)
    return body, inputs, threshold


Handler = Callable[..., Awaitable[exchange.Answer]]
# The Flask endpoint each handler stands in for (the requests metric's label).
ROUTES: dict[Handler, str] = {classify: "v1.classify", predict: "v1.predict", infer: "v2.infer"}
# Model names and versions as Flask's default converter takes them: anything but a slash.
_PATTERNS: list[tuple[re.Pattern[str], Handler]] = [
    (re.compile(r"^/v1/models/([^/]+):classify$"), classify),
    (re.compile(r"^/v1/models/([^/]+)/versions/([^/]+):classify$"), classify),
    (re.compile(r"^/v2/models/([^/]+)/infer$"), infer),
    (re.compile(r"^/v2/models/([^/]+)/versions/([^/]+)/infer$"), infer),
    (re.compile(r"^/v1/models/([^/]+):predict$"), predict),
    (re.compile(r"^/v1/models/([^/]+)/versions/([^/]+):predict$"), predict),
]


def route(method: str, path: str) -> tuple[Handler, tuple[str, ...]] | None:
    """The hot handler of a request, with the names in its path; None for every other request."""
    if method != "POST" or not path.startswith(("/v1/models/", "/v2/models/")):
        return None
    for pattern, handler in _PATTERNS:
        if match := pattern.match(path):
            return handler, match.groups()
    return None
