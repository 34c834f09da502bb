"""Protocol completeness through the Flask test client over a real runtime: JSON errors for every route,
Triton's statistics, configuration and repository extensions, content codings, datatypes, and the model
name KServe's client sends."""

from __future__ import annotations

import gzip
import time
import zlib

import numpy as np
import orjson
import pytest

TOKEN = "s3cret-token-for-tests-0123456789"


def infer_body(x: np.ndarray, datatype: str = "UINT8", **extra) -> dict:
    return {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": datatype,
                        "data": x.ravel().tolist()}], **extra}


@pytest.mark.parametrize("method, path", [
    ("get", "/nope"), ("get", "/v2/nope"), ("get", "/v2/repository/models/mnist-tiny/unload"),
    ("get", "/v2/models/mnist-tiny/versions/1/nope"), ("delete", "/v2/models/mnist-tiny"),
    ("put", "/v2/models/mnist-tiny/infer")])
def test_every_unsupported_route_is_a_json_error_worded_for_an_api_client(client, method, path):
    response = getattr(client, method)(path)
    assert response.status_code in (404, 405) and response.mimetype == "application/json"
    message = response.json["error"]
    assert path in message and "browser" not in message and "manually" not in message


def test_models_stats_is_the_statistics_route_not_a_model_called_stats(client):
    response = client.get("/v2/models/stats")
    assert response.status_code == 200
    assert {(s["name"], s["version"]) for s in response.json["model_stats"]} >= {
        ("mnist-tiny", "1"), ("mnist-tiny", "2")}


def _stats(client, version: str = "2") -> dict:
    response = client.get(f"/v2/models/mnist-tiny/versions/{version}/stats")
    assert response.status_code == 200, response.json
    (stats,) = response.json["model_stats"]
    return stats


def test_statistics_count_inferences_executions_successes_failures_and_times(client, mnist):
    before = _stats(client)
    for n in (3, 5):
        response = client.post("/v2/models/mnist-tiny/infer", json=infer_body(mnist["test_x"][:n]))
        assert response.status_code == 200
    bad = infer_body(mnist["test_x"][:1], "FP32")  # 0..255 as FP32: out of range, refused
    assert client.post("/v2/models/mnist-tiny/infer", json=bad).status_code == 400
    after = _stats(client)
    grew = {k: after["inference_stats"][k]["count"] - before["inference_stats"][k]["count"]
            for k in ("success", "fail", "queue", "compute_infer")}
    assert after["inference_count"] - before["inference_count"] == 8
    assert after["execution_count"] - before["execution_count"] == 2
    assert grew == {"success": 2, "fail": 1, "queue": 2, "compute_infer": 2}
    for key in ("success", "queue", "compute_infer"):
        assert after["inference_stats"][key]["ns"] > before["inference_stats"][key]["ns"]
    assert after["last_inference"] >= before["last_inference"]
    assert time.time() - 600 < after["last_inference"] / 1000 <= time.time()
    # Version 1 saw none of it; the unversioned route lists both versions.
    assert {s["version"] for s in client.get("/v2/models/mnist-tiny/stats").json["model_stats"]} == {"1", "2"}
    assert client.get("/v2/models/nope/stats").status_code == 404


def test_model_config_states_batching_inputs_and_outputs(client):
    config = client.get("/v2/models/mnist-tiny/config").json
    assert config["name"] == "mnist-tiny" and config["max_batch_size"] == 64
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "format": "FORMAT_NCHW",
                                "dims": [1, 28, 28]}]
    assert [o["name"] for o in config["output"]] == ["logits", "probabilities", "label"]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 2000
    assert config["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == 256
    assert config["instance_group"][0]["kind"] == "KIND_CPU"
    assert client.get("/v2/models/mnist-tiny/versions/1/config").status_code == 200


def test_repository_index_is_off_without_a_token(client):
    response = client.post("/v2/repository/index", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 403 and "TRAINSERVE_MANAGEMENT_TOKEN" in response.json["error"]


def test_repository_index_needs_the_token_and_lists_every_artifact_with_its_state(make_app):
    client = make_app(management_token=TOKEN).test_client()
    missing = client.post("/v2/repository/index")
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"].startswith("Bearer")
    for wrong in ("Bearer nope", f"Bearer {TOKEN}x", f"Basic {TOKEN}"):
        response = client.post("/v2/repository/index", headers={"Authorization": wrong})
        assert response.status_code in (401, 403) and TOKEN not in response.get_data(as_text=True)
    assert client.post("/v2/repository/index", headers={"Authorization": "Bearer nope"}).status_code == 403
    auth = {"Authorization": f"Bearer {TOKEN}"}
    index = client.post("/v2/repository/index", headers=auth).json
    states = {(e["name"], e["version"]): e for e in index}
    assert states[("mnist-tiny", "1")]["state"] == states[("mnist-tiny", "2")]["state"] == "READY"
    assert states[("tampered", "1")]["state"] == "UNAVAILABLE"
    assert "sha256" in states[("tampered", "1")]["reason"]
    for action in ("load", "unload"):
        response = client.post(f"/v2/repository/models/mnist-tiny/{action}", headers=auth)
        assert response.status_code == 409 and "model control is 'poll'" in response.json["error"]
        assert client.post(f"/v2/repository/models/mnist-tiny/{action}").status_code == 401
    assert client.post("/v2/repository/models/..%2Fetc/load", headers=auth).status_code == 404
    ready = client.post("/v2/repository/index", headers=auth, json={"ready": True}).json
    assert {e["name"] for e in ready} == {"mnist-tiny"}
    assert client.post("/v2/repository/index", headers=auth, json={"ready": "yes"}).status_code == 400


def test_the_token_is_never_in_the_settings_repr_or_errors():
    from service.config import ConfigError, ServiceConfig
    assert TOKEN not in repr(ServiceConfig(management_token=TOKEN))
    with pytest.raises(ConfigError) as caught:
        ServiceConfig.from_env({"TRAINSERVE_MANAGEMENT_TOKEN": "short secret"})
    assert "short secret" not in str(caught.value)


def test_kserve_model_name_in_the_body_must_match_the_path(client, mnist):
    body = infer_body(mnist["test_x"][:1], model_name="mnist-tiny", id="k-1")
    assert client.post("/v2/models/mnist-tiny/infer", json=body).status_code == 200
    body["model_name"] = "other"
    response = client.post("/v2/models/mnist-tiny/infer", json=body)
    assert response.status_code == 400 and "model_name" in response.json["error"]


def test_json_labelled_octet_stream_without_a_binary_header_is_read_as_json(client, mnist):
    body = orjson.dumps(infer_body(mnist["test_x"][:2]))
    response = client.post("/v2/models/mnist-tiny/infer", data=body,
                           headers={"Content-Type": "application/octet-stream"})
    assert response.status_code == 200 and response.json["outputs"][0]["shape"] == [2, 10]


@pytest.mark.parametrize("coding, encode", [
    ("gzip", gzip.compress), ("deflate", zlib.compress), ("x-gzip", gzip.compress)])
def test_compressed_request_bodies_are_decoded(client, mnist, coding, encode):
    plain = orjson.dumps(infer_body(mnist["test_x"][:4]))
    response = client.post("/v2/models/mnist-tiny/infer", data=encode(plain),
                           headers={"Content-Type": "application/json", "Content-Encoding": coding})
    assert response.status_code == 200, response.json
    expected = client.post("/v2/models/mnist-tiny/infer", data=plain, content_type="application/json")
    assert response.json["outputs"] == expected.json["outputs"]


def test_a_compressed_binary_request_is_decoded_before_its_header_length_is_read(client, mnist):
    raw = mnist["test_x"][:3].tobytes()
    header = orjson.dumps({"inputs": [{"name": "input", "shape": [3, 784], "datatype": "UINT8",
                                       "parameters": {"binary_data_size": len(raw)}}]})
    response = client.post("/v2/models/mnist-tiny/infer", data=gzip.compress(header + raw), headers={
        "Inference-Header-Content-Length": str(len(header)), "Content-Encoding": "gzip"})
    assert response.status_code == 200, response.json
    assert response.json["outputs"][0]["shape"] == [3, 10]


def test_a_decompression_bomb_is_413_and_bad_codings_are_refused(make_app):
    client = make_app(max_request_bytes=64 * 1024).test_client()
    bomb = gzip.compress(b"[" + b"0," * (8 << 20) + b"0]")  # 16 MiB of JSON in about 16 KiB
    assert len(bomb) < 64 * 1024
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    response = client.post("/v2/models/mnist-tiny/infer", data=bomb, headers=headers)
    assert response.status_code == 413 and "decoded" in response.json["error"]
    assert client.post("/v2/models/mnist-tiny/infer", data=b"not gzip", headers=headers).status_code == 400
    truncated = gzip.compress(b'{"inputs": []}')[:-6]
    assert client.post("/v2/models/mnist-tiny/infer", data=truncated, headers=headers).status_code == 400
    response = client.post("/v2/models/mnist-tiny/infer", data=b"{}",
                           headers={"Content-Type": "application/json", "Content-Encoding": "br"})
    assert response.status_code == 415 and "Content-Encoding" in response.json["error"]


def test_responses_are_gzipped_only_when_asked_and_big_enough(client, mnist):
    body = infer_body(mnist["test_x"][:8])
    asked = client.post("/v2/models/mnist-tiny/infer", json=body, headers={"Accept-Encoding": "gzip"})
    assert asked.headers["Content-Encoding"] == "gzip" and "Accept-Encoding" in asked.headers["Vary"]
    plain = client.post("/v2/models/mnist-tiny/infer", json=body)
    assert "Content-Encoding" not in plain.headers
    assert orjson.loads(gzip.decompress(asked.get_data())) == plain.json
    small = client.get("/v2/health/live", headers={"Accept-Encoding": "gzip"})
    assert "Content-Encoding" not in small.headers and small.json == {"live": True}


@pytest.mark.parametrize("datatype, scale", [("FP16", 255), ("FP64", 255), ("INT64", 1), ("INT32", 1),
                                             ("UINT16", 1)])
def test_other_numeric_datatypes_are_converted_when_they_fit(client, mnist, datatype, scale):
    x = mnist["test_x"][:4]
    expected = client.post("/v2/models/mnist-tiny/infer", json=infer_body(x)).json["outputs"]
    values = x / scale if scale != 1 else x
    response = client.post("/v2/models/mnist-tiny/infer", json=infer_body(values, datatype))
    assert response.status_code == 200, response.json
    got = {o["name"]: o for o in response.json["outputs"]}
    assert got["label"]["data"] == {o["name"]: o for o in expected}["label"]["data"]


@pytest.mark.parametrize("datatype, data, message", [
    ("INT64", [300] * 784, "0..255"), ("INT64", [-1] * 784, "0..255"), ("FP64", [1.5] * 784, "[0.0, 1.0]"),
    ("FP64", [1e300] * 784, "beyond FP32"), ("INT32", [0.5] * 784, "integers"),
    ("BF16", [0] * 784, "datatype"), ("INT8", [200] * 784, "INT8")])
def test_values_that_do_not_fit_are_400(client, datatype, data, message):
    body = {"inputs": [{"name": "input", "shape": [1, 784], "datatype": datatype, "data": data}]}
    response = client.post("/v2/models/mnist-tiny/infer", json=body)
    assert response.status_code == 400 and message in response.json["error"]


def test_binary_fp16_and_int64_inputs(client, mnist):
    x = mnist["test_x"][:2].reshape(2, 784)
    expected = client.post("/v2/models/mnist-tiny/infer", json=infer_body(x)).json["outputs"][2]["data"]
    for datatype, raw in (("FP16", (x / 255).astype("<f2").tobytes()), ("INT64", x.astype("<i8").tobytes())):
        header = orjson.dumps({"inputs": [{"name": "input", "shape": [2, 784], "datatype": datatype,
                                           "parameters": {"binary_data_size": len(raw)}}],
                               "outputs": [{"name": "label"}]})
        response = client.post("/v2/models/mnist-tiny/infer", data=header + raw,
                               headers={"Inference-Header-Content-Length": str(len(header))})
        assert response.status_code == 200, response.json
        assert response.json["outputs"][0]["data"] == expected
