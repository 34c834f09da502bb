"""Probes, the Prometheus scrape and the API documents."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest


def test_healthz_and_readyz(client):
    assert client.get("/healthz").json == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json["models"] == ["mnist-tiny/1", "mnist-tiny/2"]


def test_a_draining_runtime_turns_readiness_off_and_a_stopped_one_gives_503(make_app, runtimes,
                                                                             artifact_root):
    # A runtime of its own (distinct settings), since this test stops it.
    client = make_app(max_queue=255).test_client()
    runtime = runtimes(model_dir=artifact_root, device="cpu", torch_threads=1, max_batch_delay_ms=2.0,
                       max_queue=255)
    body = {"instances": [[0] * 784]}
    assert client.get("/readyz").status_code == 200
    runtime.proc.send_signal(signal.SIGUSR1)  # what the launcher sends on SIGTERM, before the front end
    deadline = time.monotonic() + 30
    while client.get("/readyz").status_code != 503 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert client.get("/readyz").status_code == 503
    assert client.get("/v2/health/ready").status_code == 503
    assert client.get("/v2/models/mnist-tiny/ready").status_code == 503
    assert client.get("/healthz").status_code == 200  # alive while it drains: no restart
    # requests still in flight while the front end drains get their answers
    assert client.post("/v1/models/mnist-tiny:predict", json=body).status_code == 200
    runtime.stop()
    response = client.post("/v1/models/mnist-tiny:predict", json=body)
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert "model runtime is not available" in response.json["error"]


def _sample(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    match = re.search(rf"^{name}\{{{re.escape(wanted)}\}} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def test_metrics_count_requests_batches_and_describe_models(client, mnist):
    # Every process of the test session shares one multiprocess folder, as a service's do: count deltas.
    counted = [("trainserve_requests_total",
                {"endpoint": "v1.predict", "model": "mnist-tiny", "status": "200", "protocol": "http"}),
               ("trainserve_requests_total",
                {"endpoint": "v1.predict", "model": "", "status": "404", "protocol": "http"}),
               ("trainserve_inference_images_total", {"model": "mnist-tiny", "version": "2"})]
    before = client.get("/metrics").get_data(as_text=True)
    client.post("/v1/models/mnist-tiny:predict",
                json={"instances": mnist["test_x"][:5].tolist(), "dtype": "uint8"})
    client.post("/v1/models/nope:predict", json={"instances": [[0] * 784]})
    until = time.monotonic() + 30  # the runtime records a batch right after answering it
    while True:
        response = client.get("/metrics")
        text = response.get_data(as_text=True)
        name, labels = counted[2]
        if _sample(text, name, **labels) - _sample(before, name, **labels) >= 5 or time.monotonic() > until:
            break
        time.sleep(0.01)
    assert response.status_code == 200 and response.content_type.startswith("text/plain; version=0.0.4")
    # an unknown model name is client data: it must not become a label value
    assert [_sample(text, n, **ls) - _sample(before, n, **ls) for n, ls in counted] == [1, 1, 5]
    assert 'trainserve_batch_size_images_count{model="mnist-tiny",version="2"}' in text
    assert 'trainserve_model_info{architecture="tiny-cnn",device="cpu"' in text
    for family in ("trainserve_request_duration_seconds_bucket", "trainserve_queue_wait_seconds_bucket",
                   "trainserve_compute_seconds_bucket", "trainserve_queue_depth_requests",
                   "trainserve_model_load_seconds"):
        assert family in text


@pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool (apt-get install prometheus)")
def test_metrics_pass_promtool_check(client):
    client.post("/v2/models/mnist-tiny/infer", json={"inputs": [
        {"name": "input", "shape": [1, 784], "datatype": "UINT8", "data": np.zeros(784, int).tolist()}]})
    text = client.get("/metrics").get_data()
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def test_docs_page_is_self_contained(client):
    page = client.get("/docs")
    assert page.status_code == 200 and page.content_type.startswith("text/html")
    html = page.get_data(as_text=True)
    assert "/v2/models/{name}/infer" in html and "<script" not in html and "http://" not in html
