"""The request rules (service/web/limits.py and the checks beside them): one table of requests, good and
bad, sent through every door (the Flask app itself, and the whole service on granian and on gunicorn over
real sockets), each answered with the same status and the same error; the rules' pure functions on their
own; and the framing faults only a front end sees."""

from __future__ import annotations

import contextlib
import functools
import http.client
import io
import socket
import struct
import zlib
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import orjson
import pytest
from PIL import Image

from service.errors import ServiceError
from service.web import limits

ZERO = [0] * 784
PREDICT = "/v1/models/mnist-tiny:predict"
CLASSIFY = "/v1/models/mnist-tiny:classify"
INFER = "/v2/models/mnist-tiny/infer"


def _png(side: int = 28) -> bytes:
    buffer = io.BytesIO()
    pixels = np.zeros((side, side), np.uint8)
    pixels[side // 4:side // 2, side // 3:side // 2] = 255
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@functools.cache
def _grey_png_with_trns(width: int, height: int) -> bytes:
    """A grey PNG with a transparent colour (Pillow decodes those), written row by row."""
    packer, row, idat = zlib.compressobj(9), b"\x00" * (1 + width), []
    for _ in range(height):
        idat.append(packer.compress(row))
    idat.append(packer.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"tRNS", b"\x00\x00")
            + _chunk(b"IDAT", b"".join(idat)) + _chunk(b"IEND", b""))


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose start-of-frame says ``width`` x ``height``."""
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@functools.cache
def _multipart(parts: int) -> bytes:
    png = _png()
    body = b"".join(b"--b0undary\r\nContent-Disposition: form-data; name=\"f%d\"; filename=\"%d.png\"\r\n"
                    b"Content-Type: image/png\r\n\r\n%s\r\n" % (i, i, png) for i in range(parts))
    return body + b"--b0undary--\r\n"


class Case(NamedTuple):
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes | Callable[[], bytes]  # a callable: made when a test first needs it, not at collection
    status: int
    error: str | None  # a fragment of the JSON error; None for a success
    host: str | None = "127.0.0.1"  # None: no Host header at all


def _json(path: str, text: bytes, status: int, error: str | None) -> Case:
    return Case("POST", path, [("Content-Type", "application/json")], text, status, error)


_BINARY_HEADER = b'{"inputs": [{"name": "input", "shape": [1, 784], "datatype": "UINT8", ' \
                 b'"parameters": {"binary_data_size": 784}, "name": "input"}]}'
_INFER = orjson.dumps({"inputs": [{"name": "input", "shape": [1, 784], "datatype": "UINT8", "data": ZERO}]})
_PARTS_TYPE = "multipart/form-data; boundary=b0undary"
_IMAGE = [("Content-Type", "image/png")]

CASES = {
    # duplicate JSON keys: refused wherever JSON is read
    "a repeated key in a v1 body": _json(
        PREDICT, b'{"instances": "bad", "instances": [' + orjson.dumps(ZERO) + b'], "dtype": "uint8"}', 400,
        "has the key 'instances' more than once"),
    "a repeated key in a nested OIP object": _json(
        INFER, _INFER.replace(b'"datatype":"UINT8"', b'"datatype":"FP32","datatype":"UINT8"'), 400,
        "has the key 'datatype' more than once"),
    "a key repeated through an escape": _json(
        PREDICT, b'{"dtype": "float32", "\\u0064type": "uint8", "instances": [' + orjson.dumps(ZERO) + b']}',
        400, "has the key 'dtype' more than once"),
    "a repeated key in a binary request's JSON header": Case(
        "POST", INFER, [("Inference-Header-Content-Length", str(len(_BINARY_HEADER)))],
        _BINARY_HEADER + bytes(784), 400, "has the key 'name' more than once"),
    "the same key in two objects": _json(
        INFER, _INFER[:-1] + b',"outputs":[{"name":"label"},{"name":"logits"}]}', 200, None),
    # OIP input names
    "an OIP input named x": _json(INFER, _INFER.replace(b'"name":"input"', b'"name":"x"'), 400,
                                  "unexpected input 'x' for model 'mnist-tiny': its input is 'input'"),
    # query parameters
    "a query parameter given twice": Case("POST", CLASSIFY + "?top_k=1&top_k=-1", _IMAGE, _png(), 400,
                                          "'top_k' is given 2 times"),
    "a top_k past its bound": Case("POST", CLASSIFY + "?top_k=99999999999999999999", _IMAGE, _png(), 400,
                                   "less than or equal to 1000"),
    "a JSON top_k past its bound": _json(PREDICT, orjson.dumps({"instances": [ZERO], "dtype": "uint8",
                                                                "top_k": 1001}), 400, "top_k"),
    "a top_k at its bound": Case("POST", CLASSIFY + "?top_k=1000", [("Content-Type", "image/png")], _png(),
                                 200, None),
    # images over the limit, whichever decoder reads them
    "a 20000x20000 grey PNG with a tRNS chunk": Case(
        "POST", CLASSIFY, [("Content-Type", "image/png")], lambda: _grey_png_with_trns(20000, 20000), 413,
        "the image is 20000x20000; the limit is 40000000 pixels"),
    "a JPEG whose frame says 65535x65535": Case(
        "POST", CLASSIFY, [("Content-Type", "image/jpeg")], _jpeg_claiming(65535, 65535), 413,
        "the image is 65535x65535; the limit is 40000000 pixels"),
    # multipart parts
    "3,000 multipart parts": Case("POST", CLASSIFY, [("Content-Type", _PARTS_TYPE)], lambda: _multipart(3000),
                                  413, "the multipart body has 3000 parts; the limit is 1000"),
    "3 multipart parts": Case("POST", CLASSIFY, [("Content-Type", _PARTS_TYPE)], lambda: _multipart(3), 200,
                              None),
    # what precedes the body
    "HTTP/1.1 without Host": Case("GET", "/healthz", [], b"", 400, "needs a Host header", host=None),
    "a Host that is two hosts": Case("GET", "/healthz", [], b"", 400, "is not one host[:port]", host="a b"),
    "header fields of 40 KB in all": Case("GET", "/healthz", [("X-A", "a" * 20_000), ("X-B", "b" * 20_000)],
                                          b"", 431, "the limit is 32768 bytes"),
    "header fields of 30 KB in all": Case("GET", "/healthz", [("X-A", "a" * 30_000)], b"", 200, None),
}


def _body(case: Case) -> bytes:
    return case.body() if callable(case.body) else case.body


def _check(case: Case, status: int, body: bytes) -> None:
    assert status == case.status, body[:300]
    answer = orjson.loads(body)
    if case.error is None:
        assert "error" not in answer
    else:
        assert case.error in answer["error"]


@pytest.mark.parametrize("name", CASES)
def test_each_request_gets_its_status_and_error_from_the_app(app, name: str) -> None:
    case = CASES[name]
    # The test client always names a host; a front end gives a missing one as an empty HTTP_HOST (granian).
    overrides = {"HTTP_HOST": case.host or ""}
    answer = app.test_client().open(case.path, method=case.method, headers=case.headers, data=_body(case),
                                    environ_overrides=overrides)
    _check(case, answer.status_code, answer.get_data())


def _over_http(port: int, case: Case) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.putrequest(case.method, case.path, skip_host=True, skip_accept_encoding=True)
        if case.host is not None:
            conn.putheader("Host", case.host)
        for name, value in case.headers:
            conn.putheader(name, value)
        body = _body(case)
        if body or case.method == "POST":
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body or None)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.mark.slow
def test_each_request_gets_the_same_answer_through_either_front_end(module_service, artifact_root) -> None:
    service = module_service({"TRAINSERVE_MODEL_DIR": str(artifact_root), "TRAINSERVE_WORKERS": "1"})
    for name, case in CASES.items():
        status, body = _over_http(service.port, case)
        try:
            _check(case, status, body)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from None


# --- framing only a front end sees -----------------------------------------------------------------------
def _raw(port: int, data: bytes, half_close: bool) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while b"}" not in received and (chunk := sock.recv(65536)):
                received += chunk
    return received


def _chunked(body: bytes, ending: bytes) -> bytes:
    return (b"POST " + CLASSIFY.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % len(body) + body + b"\r\n" + ending)


CHUNKED = {  # name: (the stream, whether the client then half-closes, status)
    "a valid chunked body": (_chunked(_png(), b"0\r\n\r\n"), False, 200),
    "a stream that ends without the last chunk": (_chunked(_png(), b""), True, 400),
    "garbage after a valid chunk": (_chunked(_png(), b"zz garbage\r\n\r\n"), False, 400),
    "a chunk size that is no number": (_chunked(b"", b"").replace(b"\r\n\r\n0\r\n", b"\r\n\r\nzz\r\n"),
                                       False, 400),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", CHUNKED)
def test_a_broken_chunked_body_is_refused_with_400(serve, artifact_root, name: str) -> None:
    stream, half_close, status = CHUNKED[name]
    server = serve({"TRAINSERVE_MODEL_DIR": str(artifact_root), "TRAINSERVE_WORKERS": "1"})
    received = _raw(server.port, stream, half_close)
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode()), received[:300]
    if status == 400:
        assert b"the body's framing is malformed" in body


# --- the rules on their own ------------------------------------------------------------------------------
@pytest.mark.parametrize("text, key", [
    (b'{"a": 1, "a": 2}', "a"),
    (b'{"a": 1, "b": {"a": 2}}', None),  # one key in each of two objects
    (b'[{"a": 1}, {"a": 1}]', None),
    (b'{"a": {}, "b": 1, "a": []}', "a"),  # an empty object between does not start a new one
    (b'{"x": "{", "a": 1, "a": 2}', "a"),  # braces inside strings are not braces
    (b'{"x": "}", "y": {"a": 1}, "a": 2}', None),
    (b'{"a" : 1, "b" :2, "a"\n:3}', "a"),
    (b'{"s": "{\\"a\\": 1, \\"a\\": 2}"}', None),  # a string holding JSON is a string
    (b'{"a": 1, "\\u0061": 2}', "a"),
    (b'{"": 1, "": 2}', ""),
    (b'[1, 2, {"k": [{"k": 1}], "k": 3}]', "k"),
])
def test_duplicate_keys_are_found_in_the_object_that_repeats_them(text: bytes, key: str | None) -> None:
    assert limits.duplicate_key(text) == key


@pytest.mark.parametrize("protocol, host, refused", [
    ("HTTP/1.1", "127.0.0.1:8000", False), ("HTTP/1.1", "[::1]:8000", False), ("HTTP/1.1", "svc.ns", False),
    ("HTTP/1.1", None, True), ("HTTP/1.1", "", True), ("HTTP/1.1", "a,b", True), ("HTTP/1.1", "a b", True),
    ("HTTP/1.0", None, False), ("HTTP/1.0", "", False), ("HTTP/1.0", "a,b", True),
])
def test_http_1_1_names_one_host(protocol: str, host: str | None, refused: bool) -> None:
    if refused:
        with pytest.raises(ServiceError) as raised:
            limits.check_host(protocol, host)
        assert raised.value.status == 400
    else:
        limits.check_host(protocol, host)


def test_parts_are_counted_by_their_delimiters() -> None:
    assert limits.multipart_parts(_multipart(5), "b0undary") == 5
    assert limits.multipart_parts(b"", "b0undary") == 0


def test_query_parameters_given_once_come_back_as_a_dict() -> None:
    assert limits.single_values([("top_k", "3"), ("include_input", "true")]) == {"top_k": "3",
                                                                                 "include_input": "true"}
    with pytest.raises(ServiceError, match="'a' is given 3 times"):
        limits.single_values([("a", "1"), ("a", "2"), ("a", "3")])
