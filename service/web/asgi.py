"""The ASGI application each HTTP worker runs under granian: the inference hot path on the worker's event
loop, and the whole Flask app beside it on the same port.

``create_asgi_app()`` is the factory granian calls in every worker. A request to one of the hot routes
(``web/hot.py``: images to ``:classify``, OIP ``infer``, v1 ``:predict``), in its usual form (no query
string, no Content-Encoding, not multipart), is served by an async handler: no thread, and its rows go to
the model runtime with every other request of the same loop turn (``handoff/grouping.py``). Everything else
goes to the Flask app (``web/app.py``), which runs in a small thread pool through a2wsgi's WSGI-in-ASGI
adapter. Both doors call the same request and answer functions (``web/exchange.py``), error texts,
request ids, CORS and compression, so a client cannot tell which one answered.

Every body is read here, on the loop, before either door sees it: a waiting body holds no thread, a body
over TRAINSERVE_MAX_REQUEST_BYTES is refused (413) and one that has not arrived by the request's deadline
gets 408 (a watchdog checks the bodies being read a few times a second; no timer per request).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

from a2wsgi import WSGIMiddleware

from service.config import ServiceConfig
from service.errors import InvalidInput, ServiceError
from service.handoff.grouping import GroupingClient
from service.logs import request_id as request_id_var
from service.metrics import LoopTurnMetrics
from service.web import encoding, exchange, limits, operability
from service.web.api.common import EXTENSION
from service.web.app import create_app
from service.web.dataplane import DataPlane
from service.web.error_handlers import log_error, log_unexpected
from service.web.followups import LoopFollowups, Recorder
from service.web.hot import ROUTES, Call, route

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

# How often the watchdog looks at the bodies being read: a stalled body gets its 408 at most this late.
WATCHDOG_S = 0.25
_NO_BODY = ("GET", "HEAD", "OPTIONS", "DELETE")
_FRAMING = (b"content-length", b"transfer-encoding")  # replaced: Flask gets the body whole and sized


def create_asgi_app(test_config: ServiceConfig | Mapping[str, Any] | None = None) -> HotPath:
    """The worker's ASGI application (the Flask app built by ``create_app`` is its second door)."""
    flask_app = create_app(test_config)
    return HotPath(flask_app.config["TRAINSERVE"], flask_app)


class HotPath:
    """The ASGI application (module docstring)."""

    def __init__(self, config: ServiceConfig, flask_app: Any) -> None:
        self.config = config
        self.flask_app = flask_app
        self.plane: DataPlane = flask_app.extensions[EXTENSION]
        self.metrics = self.plane.metrics
        # Flask's threads only run the routes that are not hot; each waits for the runtime with the GIL
        # released, as under gunicorn.
        # a2wsgi types the ASGI messages as TypedDicts; here they are the plain dicts granian passes.
        self.flask = cast(App, WSGIMiddleware(flask_app, workers=config.threads))
        self.client = GroupingClient(config.runtime_paths, max_waiting=config.max_queue)
        self.followups = LoopFollowups(self.client, Recorder(self.metrics))  # after each answer
        self.decoder: asyncio.AbstractEventLoop | None = None
        self._reading: dict[asyncio.Task[Any], float] = {}  # bodies being read -> their deadline
        self._late: set[asyncio.Task[Any]] = set()
        self._watchdog: asyncio.TimerHandle | None = None
        self.turn = LoopTurnMetrics(self.metrics)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def close(self) -> None:
        """Close the connections to the runtimes (the Flask app's and the loop's)."""
        self.client.close()
        self.plane.close()

    # --- dispatch ----------------------------------------------------------------------------------------
    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        arrived = time.monotonic()
        headers = _headers(scope)
        found = None if scope["query_string"] else route(scope["method"], scope["path"])
        if (found is None or headers.get("content-encoding", "identity").lower() != "identity"
                or headers.get("content-type", "").startswith("multipart/")):
            await self._to_flask(scope, receive, send, headers, arrived)
            return
        handler, params = found
        call = Call(headers, arrived, operability.take_request_id(headers.get("x-request-id", "")),
                    ROUTES[handler], scope["path"])
        token = request_id_var.set(call.request_id)
        self.turn.count(1)
        try:
            try:
                # The rules Flask's hook applies to what precedes the body (the hot routes take no query).
                limits.check_host(f"HTTP/{scope['http_version']}", headers.get("host"))
                limits.check_header_bytes(headers.items())
                call.body = await self._read_body(receive, headers, arrived)
                answer = await handler(self, call, *params)
            except ServiceError as exc:
                answer = _error_answer(exc)
            except Exception:
                log_unexpected()
                answer = exchange.Answer(exchange.error_body("internal server error"), 500)
            await self._respond(send, call, answer)
            if call.followup is not None and answer.status < 400:
                self.followups.answered(call.followup)  # the answer is sent: nothing here delays it
        finally:
            self.turn.count(-1)
            request_id_var.reset(token)

    async def _respond(self, send: Send, call: Call, answer: exchange.Answer) -> None:
        body, headers = answer.body, [(b"content-type", answer.content_type.encode())]
        vary = []
        for name, value in answer.headers.items():
            headers.append((name.lower().encode(), value.encode()))
        cors = operability.cors_headers(call.headers.get("origin"), self.config.cors_origin_list)
        if cors.pop("Vary", None):
            vary.append("Origin")
        if encoding.compressible(len(body), answer.content_type):
            vary.append("Accept-Encoding")
            if encoding.accepts_gzip(call.headers.get("accept-encoding", "")):
                body = encoding.gzipped(body)
                headers.append((b"content-encoding", b"gzip"))
        headers.append((b"content-length", str(len(body)).encode()))
        headers.append((b"x-request-id", call.request_id.encode()))
        headers.extend((name.lower().encode(), value.encode()) for name, value in cors.items())
        if vary:
            headers.append((b"vary", ", ".join(vary).encode()))
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        took = time.monotonic() - call.arrived
        self.turn.done.append((call.model, call.endpoint, answer.status, call.version, took))
        if call.routed is not None:
            self.turn.routed.append((call.model, call.version or "", call.routed.role, answer.status))
        if self.config.access_log:
            operability.log_access("POST", call.path, answer.status, len(body), took * 1000)

    async def _to_flask(self, scope: Scope, receive: Receive, send: Send, headers: dict[str, str],
                        arrived: float) -> None:
        """Hand the request to the Flask app with its body already read (and any body error for Flask's
        own hook to raise, so that the answer carries everything Flask's answers carry)."""
        body, error = b"", None
        if scope["method"] not in _NO_BODY or "content-length" in headers or "transfer-encoding" in headers:
            try:
                body = await self._read_body(receive, headers, arrived)
            except ServiceError as exc:
                error = exc
        sized = [(k, v) for k, v in scope["headers"] if k.lower() not in _FRAMING]
        if error is None:
            sized.append((b"content-length", str(len(body)).encode()))
        inner = dict(scope, headers=sized, trainserve={"arrived": arrived, "body_error": error})
        await self.flask(inner, _replay(body), send)

    # --- bodies ------------------------------------------------------------------------------------------
    async def _read_body(self, receive: Receive, headers: dict[str, str], arrived: float) -> bytes:
        """The whole body, within the size limit (413) and the request's deadline (408)."""
        limit = self.config.max_request_bytes
        declared = headers.get("content-length")
        size = None
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise InvalidInput(f"Content-Length {declared[:40]!r} is not a byte count") from None
            if size > limit:
                raise exchange.declared_too_large(size, limit)
        task = asyncio.current_task()
        assert task is not None
        self._reading[task] = arrived + self.config.request_timeout_s
        if self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().call_later(WATCHDOG_S, self._watch)
        chunks: list[bytes] = []
        total = 0
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":  # the client left, or granian found bad framing
                    if size is None:
                        raise exchange.malformed_framing(total, "the stream ended")
                    raise exchange.cut_short(total, size)
                chunk = message.get("body", b"")
                total += len(chunk)
                if total > limit:
                    raise exchange.over_limit(limit)
                if chunk:
                    chunks.append(chunk)
                if not message.get("more_body", False):
                    break
        except asyncio.CancelledError:
            if task not in self._late:
                raise
            if sys.version_info >= (3, 11):  # 3.10 counts no cancellations: nothing to take back
                task.uncancel()
            raise exchange.too_slow(self.config.request_timeout_s, total) from None
        finally:
            self._reading.pop(task, None)
            self._late.discard(task)
        if size is not None and total < size:
            raise exchange.cut_short(total, size)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _watch(self) -> None:
        """Cancel the body reads whose deadline has passed (they answer 408)."""
        now = time.monotonic()
        for task, deadline in list(self._reading.items()):
            if now >= deadline and task not in self._late:
                self._late.add(task)
                task.cancel()
        self._watchdog = asyncio.get_running_loop().call_later(WATCHDOG_S, self._watch) if self._reading \
            else None


def _headers(scope: Scope) -> dict[str, str]:
    """The request's headers by lower-case name; repeated ones joined with commas (as WSGI does)."""
    headers: dict[str, str] = {}
    for name, value in scope["headers"]:
        key, text = name.decode("latin-1").lower(), value.decode("latin-1")
        headers[key] = f"{headers[key]},{text}" if key in headers else text
    return headers


def _replay(body: bytes | bytearray) -> Receive:
    """An ASGI receive that gives the already-read body, then reports the client gone."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": bytes(body), "more_body": False}

    return receive


def _error_answer(exc: ServiceError) -> exchange.Answer:
    log_error(exc)
    return exchange.Answer(exchange.error_body(exc.message), exc.status, headers=exc.headers())
