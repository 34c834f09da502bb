"""The whole service as an operator runs it (``python -m service``), on each front end: SIGTERM drain,
metrics across workers and the runtime, a runtime crash and its restart, start-up failures."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from PIL import Image
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

pytestmark = pytest.mark.slow

ZERO = {"instances": [[0] * 784], "dtype": "uint8"}
PREDICTED = re.compile(
    r'^trainserve_requests_total\{endpoint="v1.predict",model="mnist-tiny",status="200"\} (\S+)$', re.M)


def sample(text: str, name: str, **labels: str) -> float | None:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    match = re.search(rf"^{name}\{{{re.escape(wanted)}\}} (\S+)$", text, re.M)
    return float(match.group(1)) if match else None


def test_sigterm_drains_queued_and_in_flight_requests(serve, special_root):
    server = serve({"TRAINSERVE_MODEL_DIR": str(special_root), "TRAINSERVE_WORKERS": "1",
                    "TRAINSERVE_THREADS": "8", "TRAINSERVE_MAX_BATCH_SIZE": "1",
                    "TRAINSERVE_GRACEFUL_TIMEOUT_S": "30"})
    url = f"{server.url}/v1/models/slow:predict"
    (runtime,) = server.runtime_pids()
    os.kill(runtime, signal.SIGSTOP)  # the requests wait for it: in flight for certain when SIGTERM comes
    try:
        with ThreadPoolExecutor(4) as pool:
            pending = [pool.submit(requests.post, url, json=ZERO, timeout=60) for _ in range(4)]
            server.wait_in_flight(4)
            server.proc.send_signal(signal.SIGTERM)
            os.kill(runtime, signal.SIGCONT)  # one runs, three wait in its queue: all during the drain
            responses = [f.result(60) for f in pending]
    finally:
        os.kill(runtime, signal.SIGCONT)
    assert [r.status_code for r in responses] == [200] * 4
    assert server.proc.wait(timeout=60) == 0
    with pytest.raises(requests.ConnectionError):
        requests.post(url, json=ZERO, timeout=5)
    assert "draining" in server.log.read_text()


def _per_worker_counts(folder: Path, tmp: Path) -> dict[str, float]:
    counts = {}
    for db in folder.glob("counter_*.db"):
        single = tmp / db.stem
        single.mkdir(parents=True)
        shutil.copy(db, single / db.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(single))
        match = PREDICTED.search(generate_latest(registry).decode())
        counts[db.stem] = float(match.group(1)) if match else 0.0
    return counts


def test_metrics_of_every_process_are_summed_in_one_scrape(serve, artifact_root, tmp_path):
    prom = tmp_path / "prom"
    prom.mkdir()
    (prom / "counter_99999.db").write_bytes(b"stale")  # from an earlier run: must be wiped at start-up
    server = serve({"TRAINSERVE_MODEL_DIR": str(artifact_root), "TRAINSERVE_WORKERS": "2",
                    "TRAINSERVE_THREADS": "2", "PROMETHEUS_MULTIPROC_DIR": str(prom),
                    "TRAINSERVE_LOG_FORMAT": "json"})
    url = f"{server.url}/v1/models/mnist-tiny:predict"
    with ThreadPoolExecutor(8) as pool:
        statuses = [r.status_code for r in pool.map(lambda _: requests.post(url, json=ZERO, timeout=30),
                                                    range(48))]
    assert statuses == [200] * 48
    # Which worker accepts a connection is the kernel's choice: the split is not asserted, the sum is.
    counts = _per_worker_counts(prom, tmp_path / "split")
    assert "counter_99999" not in counts and sum(counts.values()) == 48
    deadline = time.monotonic() + 30  # the runtime records a batch right after answering it
    while (sample(text := requests.get(f"{server.url}/metrics", timeout=10).text,
                  "trainserve_inference_images_total", model="mnist-tiny", version="2") != 48
           and time.monotonic() < deadline):
        time.sleep(0.05)
    for _ in range(4):  # whichever worker answers the scrape, it reports every process's samples
        text = requests.get(f"{server.url}/metrics", timeout=10).text
        assert float(PREDICTED.search(text).group(1)) == 48  # the HTTP workers' requests
        assert sample(text, "trainserve_inference_images_total", model="mnist-tiny", version="2") == 48
        # one model copy: the runtime's (HTTP workers hold none)
        assert len(re.findall(r'^trainserve_model_load_seconds\{model="mnist-tiny",pid="\d+",version="2"\}',
                              text, re.M)) == 1
    if shutil.which("promtool"):
        check = subprocess.run(["promtool", "check", "metrics"], input=text.encode(), capture_output=True)
        assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
    server.stop()
    lines = [line for line in server.log.read_text().splitlines() if line.startswith("{")]
    assert lines and all("message" in json.loads(line) for line in lines)


def test_a_crashed_runtime_answers_503_with_retry_after_then_is_restarted(serve, artifact_root):
    server = serve({"TRAINSERVE_MODEL_DIR": str(artifact_root), "TRAINSERVE_WORKERS": "1"})
    url = f"{server.url}/v1/models/mnist-tiny:predict"
    assert requests.post(url, json=ZERO, timeout=30).status_code == 200
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    loaded = re.search(r'^trainserve_model_load_seconds\{model="mnist-tiny",pid="(\d+)"', text, re.M)
    pid = int(loaded.group(1))
    os.kill(pid, signal.SIGKILL)
    down = requests.post(url, json=ZERO, timeout=30)  # long before a new runtime has imported torch
    assert down.status_code == 503 and down.headers["Retry-After"] == "1"
    assert "model runtime" in down.json()["error"]
    assert requests.get(f"{server.url}/readyz", timeout=30).status_code == 503
    assert requests.get(f"{server.url}/healthz", timeout=30).status_code == 200  # the HTTP side lives on
    server.wait_ready()
    assert requests.post(url, json=ZERO, timeout=30).status_code == 200
    assert "restarting in" in server.log.read_text()


def test_a_chunked_body_over_the_limit_is_413_and_one_within_it_is_served(serve, artifact_root, mnist):
    server = serve({"TRAINSERVE_MODEL_DIR": str(artifact_root), "TRAINSERVE_WORKERS": "1",
                    "TRAINSERVE_MAX_REQUEST_BYTES": "4096"})
    url = f"{server.url}/v1/models/mnist-tiny:classify"
    png = io.BytesIO()
    Image.fromarray(mnist["test_x"][0]).save(png, format="PNG")

    def chunked(data: bytes):  # a generator body: requests sends it with Transfer-Encoding: chunked
        yield from (data[i:i + 1000] for i in range(0, len(data), 1000))

    big = requests.post(url, data=chunked(png.getvalue() + bytes(20000)), timeout=30,
                        headers={"Content-Type": "image/png"})
    assert big.status_code == 413 and "limit of 4096 bytes" in big.json()["error"]
    small = requests.post(url, data=chunked(png.getvalue()), timeout=30,
                          headers={"Content-Type": "image/png"})
    assert small.status_code == 200
    assert small.json()["predictions"][0]["label"] == str(mnist["test_y"][0])


def test_a_request_whose_http_worker_dies_gets_its_connection_closed_not_an_answer(serve, special_root):
    server = serve({"TRAINSERVE_MODEL_DIR": str(special_root), "TRAINSERVE_WORKERS": "1",
                    "TRAINSERVE_MAX_BATCH_SIZE": "1"})
    url = f"{server.url}/v1/models/slow:predict"
    (runtime,) = server.runtime_pids()
    os.kill(runtime, signal.SIGSTOP)  # the requests stay in the worker until it dies
    try:
        with ThreadPoolExecutor(4) as pool:
            pending = [pool.submit(requests.post, url, json=ZERO, timeout=60) for _ in range(4)]
            server.wait_in_flight(4)
            for worker in server.worker_pids():
                os.kill(worker, signal.SIGKILL)
            closed = 0
            for future in pending:
                try:
                    future.result(60)
                except requests.ConnectionError:
                    closed += 1
    finally:
        os.kill(runtime, signal.SIGCONT)
    assert closed == 4
    server.wait_ready()  # the front end starts a new worker; the runtime dropped the dead one's slots
    assert requests.post(url, json=ZERO, timeout=60).status_code == 200


@pytest.mark.parametrize("env, message", [
    ({"TRAINSERVE_MAX_BATCH_SIZE": "zero"}, "TRAINSERVE_MAX_BATCH_SIZE='zero' is not valid"),
    ({"TRAINSERVE_MODEL_DIR": "/nonexistent/models"}, "is not a folder"),
    ({"TRAINSERVE_SERVER": "apache"}, "TRAINSERVE_SERVER='apache' is not valid"),
])
def test_a_bad_setting_stops_start_up_with_a_clear_message(env, message, tmp_path):
    full_env = {"PATH": "/usr/bin:/bin", "TRAINSERVE_BIND": "127.0.0.1:0", "TRAINSERVE_WORKERS": "1",
                "TRAINSERVE_DEVICE": "cpu"} | env
    result = subprocess.run([sys.executable, "-m", "service"], cwd=Path(__file__).resolve().parents[2],
                            env=full_env, capture_output=True, timeout=120)
    output = (result.stdout + result.stderr).decode()
    assert result.returncode != 0
    assert message in output
    assert "Traceback" not in output and len(output.splitlines()) <= 3, output
