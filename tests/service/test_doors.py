"""Every way in answers alike: the same table of requests, good and bad, sent over real HTTP to the service
on granian (the event-loop hot path, with the Flask app beside it on the same port) and on gunicorn (the
Flask app alone, a thread per request); statuses, the headers a client reads and the bodies must be the
same, byte for byte. Triton proves its HTTP and gRPC fronts the same way."""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image

REPO = Path(__file__).resolve().parents[2]

ID = {"X-Request-ID": "doors-0001"}
GZIP = {"Accept-Encoding": "gzip"}
ORIGIN = "https://app.example.com"
# What a client reads: everything but the server's own Date and Server.
COMPARED = ("content-type", "content-length", "content-encoding", "vary", "retry-after", "x-request-id",
            "inference-header-content-length", "access-control-allow-origin",
            "access-control-expose-headers", "www-authenticate", "allow")


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _infer(x: np.ndarray, datatype: str = "UINT8", **extra: object) -> bytes:
    return json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": datatype,
                                   "data": x.ravel().tolist()}], **extra}).encode()


def _predict(x: np.ndarray, **extra: object) -> bytes:
    return json.dumps({"instances": x.tolist(), **extra}).encode()


def _binary(x: np.ndarray, **parameters: object) -> tuple[bytes, dict[str, str]]:
    header = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "UINT8",
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "parameters": parameters}).encode()
    return header + x.tobytes(), {"Inference-Header-Content-Length": str(len(header)),
                                  "Content-Type": "application/octet-stream"}


Request = tuple[str, str, bytes | list[bytes], dict[str, str]]


def _table(mnist: dict[str, np.ndarray]) -> dict[str, Request]:
    """name -> (method, path, body, headers); a body given as a list of chunks is sent chunked."""
    digits = mnist["test_x"][:64].reshape(64, 1, 28, 28)
    png = (REPO / "samples" / "drawn-3.png").read_bytes()
    jpeg = (REPO / "samples" / "mnist-0.jpg").read_bytes()
    classify, infer = "/v1/models/mnist-tiny:classify", "/v2/models/mnist-tiny/infer"
    predict = "/v1/models/mnist-tiny/versions/1:predict"
    image, js = {"Content-Type": "image/png"}, {"Content-Type": "application/json"}
    bin4, bin4_headers = _binary(digits[:4], binary_data_output=True)
    return {
        "a PNG": ("POST", classify, png, image),
        "a JPEG, version in the path": ("POST", "/v1/models/mnist-tiny/versions/1:classify", jpeg,
                                        {"Content-Type": "image/jpeg"}),
        "an MNIST digit as PNG": ("POST", classify, _png(mnist["test_x"][0]), image),
        "a PNG sent chunked": ("POST", classify, [png[:100], png[100:]], image),
        "a PNG with top_k (query string)": ("POST", classify + "?top_k=2", png, image),
        "not an image": ("POST", classify, b"hello", image),
        "text/plain": ("POST", classify, png, {"Content-Type": "text/plain"}),
        "no body": ("POST", classify, b"", image),
        "an unknown model": ("POST", "/v1/models/nope:classify", png, image),
        "an unknown version": ("POST", "/v1/models/mnist-tiny/versions/9:classify", png, image),
        "over the size limit": ("POST", classify, bytes(300_000), image),
        "OIP JSON, UINT8": ("POST", infer, _infer(digits[:1]), js),
        "OIP JSON, FP32, with an id": ("POST", infer, _infer(digits[:2] / 255.0, "FP32", id="r1"), js),
        "OIP JSON, 16 images, gzip accepted": ("POST", infer, _infer(digits[:16]), js | GZIP),
        "OIP JSON, 64 images: over the JSON limit": ("POST", infer, _infer(digits), js),
        "OIP JSON, classification": ("POST", infer, _infer(digits[:3], outputs=[
            {"name": "probabilities", "parameters": {"classification": 2}}]), js),
        "OIP binary, binary outputs": ("POST", infer, bin4, bin4_headers),
        "OIP binary, no content type": ("POST", infer, bin4, {
            "Inference-Header-Content-Length": bin4_headers["Inference-Header-Content-Length"]}),
        "OIP binary, header length too long": ("POST", infer, bin4, bin4_headers | {
            "Inference-Header-Content-Length": str(len(bin4) + 1)}),
        "OIP, a bad shape": ("POST", infer, _infer(digits[:1, :, :27]), js),
        "OIP, values out of range": ("POST", infer, _infer(digits[:1] * 2.0, "FP32"), js),
        "OIP, malformed JSON": ("POST", infer, b'{"inputs": [', js),
        "OIP, no inputs": ("POST", infer, b'{"outputs": []}', js),
        "OIP, another model named in the body": ("POST", infer, _infer(digits[:1], model_name="other"), js),
        "OIP, JSON over its limit": ("POST", infer, b'{"inputs": [' + b" " * 70_000 + b"]}", js),
        "OIP, an unknown output": ("POST", infer, _infer(digits[:1], outputs=[{"name": "nope"}]), js),
        "v1 predict, uint8": ("POST", predict, _predict(digits[:2], dtype="uint8", top_k=3), js),
        "v1 predict, float": ("POST", predict, _predict(digits[:1] / 255), js),
        "v1 predict, a bad dtype": ("POST", predict, b'{"instances": [[1]], "dtype": "int8"}', js),
        "v1 predict, not JSON": ("POST", predict, b"instances=1", {"Content-Type": "text/plain"}),
        "v1 predict, from a browser": ("POST", predict, _predict(digits[:1], dtype="uint8"),
                                       js | {"Origin": ORIGIN}),
        "a GET on an inference route": ("GET", infer, b"", {}),
        "the readiness probe": ("GET", "/readyz", b"", {}),
    }


@pytest.fixture(scope="module")
def doors(tmp_path_factory: pytest.TempPathFactory, artifact_root, service_class) -> Iterator[dict[str, Any]]:
    """The same models on both front ends, with small limits so that the limit cases stay small."""
    env = {"TRAINSERVE_MODEL_DIR": str(artifact_root), "TRAINSERVE_WORKERS": "1",
           "TRAINSERVE_MAX_REQUEST_BYTES": str(256 * 1024), "TRAINSERVE_MAX_JSON_BYTES": str(64 * 1024),
           "TRAINSERVE_CORS_ORIGINS": ORIGIN}
    started = {}
    try:
        for server in ("granian", "gunicorn"):
            started[server] = service_class(env, tmp_path_factory.mktemp(server), server)
        for service in started.values():
            service.wait_ready()
        yield started
    finally:
        for service in started.values():
            service.stop()


def _send(service: Any, method: str, path: str, body: bytes | list[bytes], headers: dict[str, str],
          **kwargs: Any) -> requests.Response:
    data = body if isinstance(body, bytes) else iter(body)  # an iterator: requests sends it chunked
    return requests.request(method, service.url + path, data=data, headers=ID | headers, timeout=60, **kwargs)


def test_the_hot_path_and_the_flask_app_answer_alike(doors, mnist):
    differences = []
    for name, request in _table(mnist).items():
        hot, flask = (_send(doors[server], *request) for server in ("granian", "gunicorn"))
        seen = [{k: r.headers.get(k) for k in COMPARED} for r in (hot, flask)]
        if (hot.status_code, seen[0], hot.content) != (flask.status_code, seen[1], flask.content):
            differences.append(f"{name}: {hot.status_code} {seen[0]} {hot.content[:200]!r} | "
                               f"{flask.status_code} {seen[1]} {flask.content[:200]!r}")
    assert not differences, "\n".join(differences)


def test_the_table_covers_success_client_errors_and_every_payload_kind(doors, mnist):
    table = _table(mnist)
    statuses = {name: _send(doors["granian"], *request).status_code for name, request in table.items()}
    assert statuses["a PNG"] == statuses["OIP binary, binary outputs"] == statuses["v1 predict, uint8"] == 200
    assert {400, 404, 405, 413, 415} <= set(statuses.values())
    raw = _send(doors["granian"], *table["OIP JSON, 16 images, gzip accepted"], stream=True)
    assert raw.headers["Content-Encoding"] == "gzip"
    answer = json.loads(gzip.decompress(raw.raw.read()))
    assert answer["model_name"] == "mnist-tiny" and len(answer["outputs"][0]["data"]) == 160


def test_a_request_without_an_id_gets_a_fresh_one_from_either_door(doors):
    png = (REPO / "samples" / "drawn-3.png").read_bytes()
    ids = set()
    for service in doors.values():
        for _ in range(2):
            answer = requests.post(f"{service.url}/v1/models/mnist-tiny:classify", data=png, timeout=60,
                                   headers={"Content-Type": "image/png"})
            assert answer.status_code == 200
            ids.add(answer.headers["X-Request-ID"])
    assert len(ids) == 4 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
