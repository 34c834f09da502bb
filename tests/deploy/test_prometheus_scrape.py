"""A real Prometheus, started on 127.0.0.1 with the compose stack's scrape config and alert rules, scrapes a
real trainserve (python -m service: a runtime, two HTTP workers, a tiny exported model) and finds the request
counter; every query of the Grafana dashboard runs against it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

pytestmark = pytest.mark.slow

# Dashboard panels that must show data once a few predictions were answered.
MUST_HAVE_DATA = ("Request rate", "Latency percentiles", "Batch size", "Queue depth", "Images per second")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path, what: str,
             timeout: float) -> None:
    """Poll ``check`` until it holds; fail with the process's log if it exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if check():
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    pytest.fail(f"{what}: not ready after {timeout:.0f} s:\n{log.read_text()[-4000:]}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it will not go."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextmanager
def running(cmd: list[str], port: int, ready_path: str, log: Path, what: str, timeout: float, cwd: Path,
            env: dict[str, str] | None = None) -> Iterator[str]:
    """Run ``cmd`` (output to ``log``) for the block; yield its base URL once ``ready_path`` answers."""
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: requests.get(f"{base}{ready_path}", timeout=2).ok, proc, log, what, timeout)
        yield base
    finally:
        stop(proc)


def tiny_model(root: Path) -> None:
    """Export an untrained linear classifier over 28x28 pixels as mnist-tiny/1 (what it answers is beside
    the point here: the counters are)."""
    torch = pytest.importorskip("torch")
    export = pytest.importorskip("training.export", reason="training/export.py is not in this tree")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    model = export.PixelClassifier(net, (0.1307,), (0.3081,)).eval()
    info = export.ArtifactInfo(name="mnist-tiny", architecture="linear", labels=tuple("0123456789"),
                               input_shape=(1, 28, 28), metrics={"test_accuracy": 0.1}, training={},
                               dataset={"name": "none", "source": "tests/deploy", "train_examples": 0,
                                        "test_examples": 0}, version="1")
    export.export(model, info, root, torch.zeros(2, 1, 28, 28, dtype=torch.uint8))


@pytest.fixture(scope="module")
def service(kit: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """trainserve on 127.0.0.1 as the container runs it: two HTTP workers, multiprocess metrics."""
    pytest.importorskip("service.web.app", reason="service/web/app.py is not in this tree yet")
    work = tmp_path_factory.mktemp("service")
    tiny_model(work / "models")
    port = free_port()
    env = {**os.environ, "TRAINSERVE_MODEL_DIR": str(work / "models"), "TRAINSERVE_BIND": f"127.0.0.1:{port}",
           "TRAINSERVE_GRPC_BIND": f"127.0.0.1:{free_port()}",
           "TRAINSERVE_WORKERS": "2", "TRAINSERVE_TORCH_THREADS": "1", "TRAINSERVE_MAX_BATCH_SIZE": "8",
           "PROMETHEUS_MULTIPROC_DIR": str(work / "metrics")}
    cmd = [sys.executable, "-m", "service"]
    with running(cmd, port, "/readyz", work / "service.log", "trainserve", 120, kit.repo, env) as base:
        yield base


@pytest.fixture(scope="module")
def prometheus(kit: Any, service: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Prometheus on 127.0.0.1 with deploy/compose's config, pointed at the test's service, scraping every
    second. Its API's base URL."""
    binary = kit.tool("prometheus")
    work = tmp_path_factory.mktemp("prometheus")
    shipped = kit.deploy / "compose" / "prometheus"
    config = yaml.safe_load((shipped / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    for job in config["scrape_configs"]:
        job.update(scrape_interval="1s", scrape_timeout="1s")
        for static in job["static_configs"]:
            static["targets"] = [service.removeprefix("http://")]
    for rules in config["rule_files"]:
        shutil.copy(shipped / rules, work / rules)
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    cmd = [binary, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
           f"--web.listen-address=127.0.0.1:{port}"]
    with running(cmd, port, "/-/ready", work / "prometheus.log", "prometheus", 60, work) as base:
        yield base


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    """An instant query's result vector; a query Prometheus rejects fails the test."""
    answer = requests.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert answer["status"] == "success", f"{expr}: {answer}"
    return answer["data"]["result"]


@pytest.fixture(scope="module")
def scraped(service: str, prometheus: str) -> str:
    """Three predictions and one unknown model answered, and scraped by Prometheus. Prometheus's URL."""
    image = [[0] * 28 for _ in range(28)]
    for _ in range(3):
        answer = requests.post(f"{service}/v1/models/mnist-tiny:predict",
                               json={"instances": [image], "dtype": "uint8"}, timeout=30)
        assert answer.status_code == 200, answer.text
    assert requests.post(f"{service}/v1/models/no-such-model:predict", json={"instances": [image]},
                         timeout=30).status_code == 404
    counted = 'sum(trainserve_requests_total{endpoint="v1.predict", status="200"})'
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        result = query(prometheus, counted)
        if result and float(result[0]["value"][1]) >= 3:
            # Two more scrapes, so that rate() over the window has samples on both sides of the requests.
            time.sleep(2.5)
            return prometheus
        time.sleep(0.5)
    pytest.fail(f"Prometheus never saw the 3 predictions: {query(prometheus, 'trainserve_requests_total')}")


def test_prometheus_finds_the_request_counter(scraped: str) -> None:
    """The counter carries model, endpoint and status labels, and the job label from the shipped config."""
    series = query(scraped, 'trainserve_requests_total{endpoint="v1.predict"}')
    by_status = {s["metric"]["status"]: s["metric"] for s in series}
    assert by_status["200"]["model"] == "mnist-tiny" and by_status["200"]["job"] == "trainserve"
    assert "404" in by_status
    assert query(scraped, 'up{job="trainserve"} == 1')


def test_alert_rules_load_and_evaluate(scraped: str) -> None:
    """Every shipped rule evaluates without error against the real series, and none fires."""
    groups = requests.get(f"{scraped}/api/v1/rules", timeout=10).json()["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert rules and all(r["health"] == "ok" for r in rules), rules
    assert all(r["state"] == "inactive" for r in rules), rules


def test_every_dashboard_query_runs(kit: Any, scraped: str) -> None:
    """Each panel's queries parse and run; the panels an operator needs first show data."""
    path = kit.deploy / "compose" / "grafana" / "dashboards" / "trainserve.json"
    dashboard = json.loads(path.read_text())
    for panel in dashboard["panels"]:
        results = []
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", "1m").replace("$model", ".*")
            results += query(scraped, expr)
        if panel["title"] in MUST_HAVE_DATA:
            assert results, f"{panel['title']}: no data"
