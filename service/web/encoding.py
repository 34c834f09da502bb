"""HTTP content codings: gzip/deflate request bodies decoded, gzip responses for clients that ask.

A compressed body is decoded in bounded steps, so that the size limit applies to the decoded size and a
decompression bomb never makes the worker hold more than the limit (plus one step).
"""

from __future__ import annotations

import gzip
import io
import zlib

from flask import Response, current_app, request
from werkzeug.datastructures import Accept
from werkzeug.http import parse_accept_header

from service.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType

# zlib window bits per coding: gzip's header, and HTTP's "deflate", which is the zlib format (RFC 9110).
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
_STEP = 1 << 16
# Below this a response goes as it is: compressing it would cost more than the bytes it saves.
MIN_COMPRESS_BYTES = 1024
_COMPRESSIBLE = ("application/json", "application/octet-stream", "text/")


def decode_body() -> None:
    """Replace a gzip- or deflate-coded body (already read and bounded by the app) by its decoded bytes."""
    coding = request.headers.get("Content-Encoding", "").strip().lower()
    if coding in ("", "identity") or not request.content_length:
        return
    wbits = _WBITS.get(coding)
    if wbits is None:
        raise UnsupportedMediaType(f"Content-Encoding {coding[:40]!r} is not supported: send gzip, deflate "
                                   "or identity")
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    decoded = inflate(request.environ["wsgi.input"].read(), wbits, limit)
    request.environ["wsgi.input"] = io.BytesIO(decoded)
    request.environ["CONTENT_LENGTH"] = str(len(decoded))
    request.environ.pop("HTTP_CONTENT_ENCODING", None)
    for cached in ("content_length", "stream"):  # werkzeug caches these from the coded body's environ
        request.__dict__.pop(cached, None)


def inflate(data: bytes, wbits: int, limit: int) -> bytes:
    """``data`` decoded, at most ``limit`` bytes (PayloadTooLarge beyond, InvalidInput when corrupt)."""
    inflater = zlib.decompressobj(wbits)
    out = bytearray()
    view = memoryview(data)
    try:
        # Input in steps too: zlib copies what it has not consumed into unconsumed_tail on every call.
        for start in range(0, len(view), _STEP):
            pending: bytes | memoryview = view[start:start + _STEP]
            while pending and not inflater.eof:
                out += inflater.decompress(pending, min(_STEP, limit + 1 - len(out)))
                pending = inflater.unconsumed_tail
                _check_size(len(out), limit)
            if inflater.eof:
                break
        while not inflater.eof and (chunk := inflater.decompress(b"", min(_STEP, limit + 1 - len(out)))):
            out += chunk
            _check_size(len(out), limit)
        if not inflater.eof:
            raise InvalidInput("the compressed body is truncated")
    except zlib.error as exc:
        raise InvalidInput(f"the body is not valid per its Content-Encoding: {exc}") from None
    return bytes(out)


def _check_size(size: int, limit: int) -> None:
    if size > limit:
        raise PayloadTooLarge(f"the decoded body is over the limit of {limit} bytes "
                              "(TRAINSERVE_MAX_REQUEST_BYTES)")


def compressible(size: int | None, content_type: str) -> bool:
    """Whether a response of this size and type is worth compressing (it then varies by Accept-Encoding)."""
    # The cheap tests first: most responses are small, and this runs on every one.
    return size is not None and size >= MIN_COMPRESS_BYTES and content_type.startswith(_COMPRESSIBLE)


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether the client's Accept-Encoding takes gzip (with a q above 0)."""
    return "gzip" in accept_encoding and parse_accept_header(accept_encoding, Accept)["gzip"] > 0


def gzipped(body: bytes) -> bytes:
    """``body`` compressed as the service does every response."""
    # Level 1: most of the saving on JSON numbers for a fraction of the CPU of the default level.
    return gzip.compress(body, compresslevel=1, mtime=0)


def compress_response(response: Response) -> Response:
    """gzip the response when the client accepts it and it is big enough to gain from it."""
    if (response.direct_passthrough or "Content-Encoding" in response.headers
            or not compressible(response.content_length, response.mimetype or "")):
        return response
    response.vary.add("Accept-Encoding")
    if not accepts_gzip(request.headers.get("Accept-Encoding", "")):
        return response
    response.set_data(gzipped(response.get_data()))
    response.headers["Content-Encoding"] = "gzip"
    return response
