"""Fixtures: tiny real artifacts trained on a real MNIST slice, real model runtime processes, apps built
through the factory on top of them, and the whole service (launcher, runtime, granian or gunicorn) for
process behaviour. No torch mocking anywhere."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from flask import Flask, Response
from torch import nn
from werkzeug.test import EnvironBuilder

from service.config import ServiceConfig
from service.contract.manifest import Manifest, read_manifest
from service.handoff.client import RuntimeClient
from service.web.app import create_app
from service.web.asgi import HotPath
from training.config import TrainConfig
from training.datasets import read_idx
from training.export import ArtifactInfo, PixelClassifier, export
from training.run import run

REPO = Path(__file__).resolve().parents[2]
MEAN, STD = (0.1307,), (0.3081,)
SHIPPED = read_manifest(Path(__file__).resolve().parents[2] / "models" / "mnist-cnn" / "1")


@dataclasses.dataclass(eq=False)
class _ModelCopy:
    """What the model table reads of a loaded model: a LoadedModel without its module."""

    key: str
    device: str = "cpu"
    load_seconds: float = 0.0
    format: str = "torchscript"

    @property
    def manifest(self) -> Manifest:
        name, version = self.key.split("/")
        return dataclasses.replace(SHIPPED, name=name, version=version)


@pytest.fixture
def model_copy() -> type[_ModelCopy]:
    """Stand-ins for loaded models, for the model table without a runtime: ``model_copy("name/1")``."""
    return _ModelCopy
LABELS = tuple(str(d) for d in range(10))


@pytest.fixture(scope="session")
def mnist(datasets_dir: Path) -> dict[str, np.ndarray]:
    """A real MNIST slice: 8,000 training and 1,000 test digits, uint8 [N, 28, 28] (training's reader)."""
    def first(name: str, count: int) -> np.ndarray:
        return read_idx(datasets_dir / "mnist" / name)[:count].numpy().copy()

    return {"train_x": first("train-images-idx3-ubyte.gz", 8000),
            "train_y": first("train-labels-idx1-ubyte.gz", 8000),
            "test_x": first("t10k-images-idx3-ubyte.gz", 1000),
            "test_y": first("t10k-labels-idx1-ubyte.gz", 1000)}


class TinyNet(nn.Module):
    """A small CNN that reaches ~95% on MNIST after one pass over 8,000 digits."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 16, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
        self.head = nn.Linear(16 * 5 * 5, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class SlowNet(nn.Module):
    """A real but deliberately slow model (a few large matmuls per batch) for drain and deadline tests."""

    def __init__(self, rounds: int = 4) -> None:
        super().__init__()
        self.head = nn.Linear(784, 10)
        self.register_buffer("m", torch.randn(768, 768) / 30)
        self.rounds = rounds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The work depends on the input, so freezing at load cannot fold it into a constant.
        acc = self.m * (1.0 + x.mean() * 0.0)
        for _ in range(self.rounds):
            acc = torch.tanh(acc @ self.m)
        return self.head(x.flatten(1)) + acc.mean() * 0.0


class PoisonNet(nn.Module):
    """A real model that raises on a valid input whose top-left pixel is bright (a failing batch)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(784, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(x[:, :, 0, 0].max() > 2.0):
            raise RuntimeError("poisoned input")
        return self.head(x.flatten(1))


def _train(net: nn.Module, mnist: dict[str, np.ndarray]) -> PixelClassifier:
    torch.manual_seed(0)
    model = PixelClassifier(net, MEAN, STD)
    x = torch.from_numpy(mnist["train_x"]).unsqueeze(1)
    y = torch.from_numpy(mnist["train_y"]).long()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for epoch in range(1):
        for i in range(0, len(x), 64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64]).backward()
            opt.step()
        del epoch
    return model.eval()


def _info(name: str, arch: str, version: str, accuracy: float) -> ArtifactInfo:
    return ArtifactInfo(name=name, architecture=arch, labels=LABELS, input_shape=(1, 28, 28),
                        metrics={"test_accuracy": accuracy}, training={"epochs": 1, "examples": 8000},
                        dataset={"name": "mnist", "source": "tests", "train_examples": 8000,
                                 "test_examples": 1000}, version=version)


@pytest.fixture(scope="session")
def artifact_root(tmp_path_factory: pytest.TempPathFactory, mnist: dict[str, np.ndarray]) -> Path:
    """models/ with mnist-tiny versions 1 and 2 (2 is the same net, exported again) and a tampered one."""
    root = tmp_path_factory.mktemp("models")
    model = _train(TinyNet(), mnist)
    probe = torch.from_numpy(mnist["test_x"][:8]).unsqueeze(1)
    with torch.inference_mode():
        accuracy = float((model(torch.from_numpy(mnist["test_x"]).unsqueeze(1)).argmax(1).numpy()
                          == mnist["test_y"]).mean())
    for version in ("1", "2"):
        export(model, _info("mnist-tiny", "tiny-cnn", version, accuracy), root, probe)
    broken = export(model, _info("tampered", "tiny-cnn", "1", accuracy), root, probe)
    with (broken / "model.pt").open("ab") as fh:
        fh.write(b"tampered")
    return root


@pytest.fixture(scope="session")
def ui_root(tmp_path_factory: pytest.TempPathFactory, artifact_root: Path) -> Path:
    """models/ for the web pages: the shipped mnist-cnn (with the plots its training wrote) beside
    mnist-tiny 1 and 2, whose version 1 has a curves.png that is a symbolic link (never handed out)."""
    root = tmp_path_factory.mktemp("ui-models")
    shutil.copytree(REPO / "models" / "mnist-cnn", root / "mnist-cnn")
    shutil.copytree(artifact_root / "mnist-tiny", root / "mnist-tiny")
    (root / "mnist-tiny" / "1" / "curves.png").symlink_to(REPO / "models" / "mnist-cnn" / "1" / "curves.png")
    return root


@pytest.fixture(scope="session")
def special_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/ with "slow" (requests stay in flight a while) and "poison" (some inputs make it raise)."""
    root = tmp_path_factory.mktemp("special-models")
    torch.manual_seed(0)
    probe = torch.zeros(2, 1, 28, 28)
    slow = PixelClassifier(SlowNet(rounds=32), MEAN, STD).eval()  # a pass of about 0.3 s
    export(slow, _info("slow", "slow", "1", 0.1), root, probe)
    export(PixelClassifier(PoisonNet(), MEAN, STD).eval(), _info("poison", "poison", "1", 0.1), root, probe)
    return root


@pytest.fixture(scope="session")
def candidate_root(tmp_path_factory: pytest.TempPathFactory, mnist: dict[str, np.ndarray]) -> Path:
    """Rollout candidates of mnist-tiny: version 3 a weaker net (trained on 400 digits: it labels some
    digits unlike versions 1 and 2), version 4 a net that raises on some valid inputs (PoisonNet)."""
    root = tmp_path_factory.mktemp("candidates")
    torch.manual_seed(1)
    weak = _train(TinyNet(), {"train_x": mnist["train_x"][:400], "train_y": mnist["train_y"][:400]})
    probe = torch.from_numpy(mnist["test_x"][:8]).unsqueeze(1)
    export(weak, _info("mnist-tiny", "tiny-cnn", "3", 0.5), root, probe)
    poison = PixelClassifier(PoisonNet(), MEAN, STD).eval()
    export(poison, _info("mnist-tiny", "poison", "4", 0.1), root, torch.zeros(2, 1, 28, 28))
    return root


LABEL_SETS = ("even=0,2,4,6,8", "ge5=5,6,7,8,9", "prime=2,3,5,7")


def _write_cancer_csv(path: Path) -> list[dict[str, float]]:
    """scikit-learn's breast-cancer table as a CSV (as scripts/breast_cancer_csv.py writes it)."""
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    names = [n.replace(" ", "_") for n in bunch.feature_names]
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([*names, "malignant"])
        for row, target in zip(bunch.data.tolist(), bunch.target.tolist(), strict=True):
            writer.writerow([*row, 1 - target])
    return [dict(zip([*names, "malignant"], [*row, 1 - t], strict=True))
            for row, t in zip(bunch.data.tolist(), bunch.target.tolist(), strict=True)]


@pytest.fixture(scope="session")
def task_root(tmp_path_factory: pytest.TempPathFactory, mnist_slice: Path) -> dict[str, object]:
    """models/ with a tabular binary model (breast cancer), an image multilabel model (MNIST digit
    properties) and a tabular multiclass model (the spiral), each trained briefly by the training code."""
    tmp = tmp_path_factory.mktemp("tasks")
    out, runs = tmp / "models", tmp / "runs"
    rows = _write_cancer_csv(tmp / "cancer.csv")
    common = {"out": out, "run_dir": runs, "optimizer": "adam", "lr": 3e-3, "threads": 1}
    run(TrainConfig(dataset=f"csv:{tmp / 'cancer.csv'}", target=("malignant",), task="binary", arch="mlp",
                    hidden=(16,), epochs=5, batch_size=32, threshold=0.4, name="cancer", **common))
    run(TrainConfig(dataset="mnist", data_dir=mnist_slice, download=False, task="multilabel",
                    label_set=LABEL_SETS, epochs=2, batch_size=50, augment=False, name="digit-props",
                    **common))
    run(TrainConfig(dataset="spiral", arch="mlp", hidden=(32, 32), epochs=2, batch_size=32, name="spiral",
                    **common))
    return {"root": out, "rows": rows}


# Settings the model runtime reads (the rest are the HTTP side's).
RUNTIME_SETTINGS = ("model_dir", "device", "model_format", "torch_threads", "max_batch_size",
                    "max_batch_delay_ms", "max_queue", "max_queue_wait_ms", "version_policy", "model_control",
                    "poll_interval_s", "request_timeout_s", "explain_max_queue", "explain_share")
# The fixtures' folders hold several versions of a model, and the tests address each: every one is served
# (the service's default policy serves only the newest; tests/service/test_hot_reload.py tests it).
TEST_POLICY = "all"


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("TRAINSERVE_", "PROMETHEUS_"))}


class RuntimeProcess:
    """A real model runtime (``python -m service.runtime``) on a Unix socket; stopped at session end."""

    def __init__(self, settings: dict[str, object], folder: Path, metrics_dir: Path) -> None:
        self.socket = folder / "runtime.sock"
        self.log = folder / "runtime.log"
        env = _clean_env() | {"TRAINSERVE_VERSION_POLICY": TEST_POLICY} | {
            f"TRAINSERVE_{k.upper()}": str(v) for k, v in settings.items()}
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        self._fh = self.log.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "service.runtime", "--socket", str(self.socket)],
                                     cwd=REPO, env=env, stdout=self._fh, stderr=subprocess.STDOUT)
        client = RuntimeClient([self.socket])
        deadline = time.monotonic() + 120
        try:
            while not (self.socket.exists() and client.ready()):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"runtime did not start:\n{self.log.read_text()}")
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._fh.close()


@pytest.fixture(scope="session")
def metrics_dir() -> Path:
    """The multiprocess metrics folder every test process shares (conftest sets the variable)."""
    return Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])


@pytest.fixture(scope="session")
def runtimes(tmp_path_factory: pytest.TempPathFactory,
             metrics_dir: Path) -> Iterator[Callable[..., RuntimeProcess]]:
    """Start (once per distinct settings, again if it has stopped) a real runtime process."""
    started: dict[tuple, RuntimeProcess] = {}

    def get(**settings: object) -> RuntimeProcess:
        # make_app's defaults, so that a test asking for the runtime of an app it built gets that one
        settings = {"version_policy": TEST_POLICY, "request_timeout_s": 10.0} | settings
        key = tuple(sorted((k, str(v)) for k, v in settings.items()))
        if key not in started or started[key].proc.poll() is not None:
            started[key] = RuntimeProcess(settings, tmp_path_factory.mktemp("runtime"), metrics_dir)
        return started[key]

    yield get
    for runtime in started.values():
        runtime.stop()


class HotClient:
    """Flask's test client's interface (the same arguments, a Flask response back) over the ASGI hot path,
    in process: the request is built by werkzeug's EnvironBuilder, as the Flask test client builds it, and
    sent to the ASGI application on an event loop of its own."""

    def __init__(self, app: HotApp) -> None:
        self.app = app

    def open(self, path: str = "/", method: str = "GET", **kwargs: object) -> Response:
        return self.send(EnvironBuilder(path=path, method=method, **kwargs).get_environ())

    def send(self, environ: dict) -> Response:
        """The answer to a request given as a WSGI environ."""
        method = environ["REQUEST_METHOD"]
        body = environ["wsgi.input"].read()
        headers = [(key[5:].replace("_", "-").lower().encode(), str(value).encode("latin-1"))
                   for key, value in environ.items() if key.startswith("HTTP_")]
        for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            if environ.get(key):
                headers.append((key.replace("_", "-").lower().encode(), environ[key].encode("latin-1")))
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method.upper(),
                 "scheme": "http", "path": environ["PATH_INFO"].encode("latin-1").decode("utf-8", "replace"),
                 "raw_path": environ["PATH_INFO"].encode("latin-1"), "root_path": "",
                 "query_string": environ["QUERY_STRING"].encode("latin-1"), "headers": headers,
                 "client": ("127.0.0.1", 50000), "server": ("localhost", 80)}
        status, answer_headers, chunks = asyncio.run_coroutine_threadsafe(
            self._call(scope, body), self.app.loop).result(timeout=120)
        return self.app.flask_app.response_class(b"".join(chunks), status=status, headers=[
            (k.decode("latin-1"), v.decode("latin-1")) for k, v in answer_headers])

    async def _call(self, scope: dict, body: bytes) -> tuple[int, list, list[bytes]]:
        sent = False
        start: dict = {}
        chunks: list[bytes] = []

        async def receive() -> dict:
            nonlocal sent
            if sent:
                await asyncio.sleep(3600)  # the client stays; the app must not wait for it
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            else:
                chunks.append(message.get("body", b""))

        await self.app.asgi(scope, receive, send)
        return start["status"], start["headers"], chunks

    def get(self, path: str = "/", **kwargs: object) -> Response:
        return self.open(path, "GET", **kwargs)

    def post(self, path: str = "/", **kwargs: object) -> Response:
        return self.open(path, "POST", **kwargs)

    def options(self, path: str = "/", **kwargs: object) -> Response:
        return self.open(path, "OPTIONS", **kwargs)

    def put(self, path: str = "/", **kwargs: object) -> Response:
        return self.open(path, "PUT", **kwargs)

    def delete(self, path: str = "/", **kwargs: object) -> Response:
        return self.open(path, "DELETE", **kwargs)


class HotApp:
    """A Flask app behind the ASGI hot path (``service.web.asgi``), for the tests: ``test_client()`` talks to
    the ASGI application; everything else is the Flask app's."""

    def __init__(self, flask_app: Flask, loop: asyncio.AbstractEventLoop) -> None:
        self.flask_app = flask_app
        self.loop = loop
        self.asgi = HotPath(flask_app.config["TRAINSERVE"], flask_app)

    def __getattr__(self, name: str) -> object:
        return getattr(self.flask_app, name)

    def test_client(self) -> HotClient:
        return HotClient(self)

    def __call__(self, environ: dict, start_response: Callable) -> list[bytes]:
        """WSGI, for tools that drive an app that way (schemathesis): through the hot path all the same."""
        answer = HotClient(self).send(environ)
        start_response(answer.status, list(answer.headers.items()))
        return [answer.get_data()]

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.asgi.close)


@pytest.fixture(scope="session")
def hot_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop on a thread of its own, as an HTTP worker runs one, for the in-process hot path."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="hot-path-loop", daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=30)
    loop.close()


@pytest.fixture(scope="module", params=["flask", "hot"])
def door(request: pytest.FixtureRequest) -> str:
    """Each way in: the Flask app alone (as gunicorn runs it), and the event-loop hot path beside it."""
    return request.param


@pytest.fixture(scope="module")
def through_door(door: str, hot_loop: asyncio.AbstractEventLoop) -> Iterator[Callable[[Flask], object]]:
    """Wrap a Flask app for this module's door; the hot path's connections are closed at the end."""
    wrapped: list[HotApp] = []

    def wrap(app: Flask) -> object:
        if door == "flask":
            return app
        wrapped.append(HotApp(app, hot_loop))
        return wrapped[-1]

    yield wrap
    for app in wrapped:
        app.close()


@pytest.fixture
def make_app(artifact_root: Path, runtimes: Callable[..., RuntimeProcess], metrics_dir: Path,
             through_door: Callable[[Flask], object]) -> Iterator[Callable[..., object]]:
    """Build apps through the factory (CPU, tiny model) over a real runtime, behind each door in turn; each
    is closed afterwards."""
    apps = []

    def build(**overrides: object) -> object:
        settings = {"model_dir": artifact_root, "device": "cpu", "torch_threads": 1,
                    "max_batch_delay_ms": 2.0, "request_timeout_s": 10.0,
                    "version_policy": TEST_POLICY} | overrides
        runtime = {k: v for k, v in settings.items() if k in RUNTIME_SETTINGS}
        config = ServiceConfig(**settings, runtime_sockets=str(runtimes(**runtime).socket),
                               prometheus_multiproc_dir=metrics_dir)
        app = through_door(create_app(config))
        apps.append(app)
        return app

    yield build
    for app in apps:
        app.extensions["trainserve"].close()


@pytest.fixture
def app(make_app: Callable[..., object]) -> object:
    """An app serving the tiny artifacts."""
    return make_app()


@pytest.fixture
def client(app: object) -> object:
    """The Flask test client of ``app``."""
    return app.test_client()


def _children(pid: int) -> list[int]:
    return [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _spare(pid: int) -> bool:
    """The launcher's spare runtime, not yet made a runtime (it names itself then)."""
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
        return b"--spare" in _cmdline(pid) and name != "model-runtime"
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """The whole service (``python -m service``) on 127.0.0.1, with the front end ``server``."""

    def __init__(self, env: dict[str, str], tmp: Path, server: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.grpc = f"127.0.0.1:{free_port()}"  # the gRPC front end's address (service/grpc)
        self.log = tmp / f"service-{self.port}.log"
        full_env = _clean_env() | {"TRAINSERVE_BIND": f"127.0.0.1:{self.port}", "TRAINSERVE_DEVICE": "cpu",
                                   "TRAINSERVE_GRPC_BIND": self.grpc,
                                   "TRAINSERVE_TORCH_THREADS": "1", "TRAINSERVE_SERVER": server,
                                   "TRAINSERVE_THREADS": "8", "TRAINSERVE_VERSION_POLICY": TEST_POLICY} | env
        self._fh = self.log.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=REPO, env=full_env,
                                     stdout=self._fh, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the service exited {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if requests.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return
            except (requests.ConnectionError, requests.Timeout):
                pass
            time.sleep(0.1)
        raise AssertionError(f"the service was not ready after {timeout}s:\n{self.log.read_text()}")

    def runtime_pids(self) -> list[int]:
        """The model runtimes' processes (not the spare waiting to replace one)."""
        return [p for p in _children(self.proc.pid) if b"service.runtime" in _cmdline(p) and not _spare(p)]

    def grpc_pids(self) -> list[int]:
        """The gRPC front end's processes."""
        return [p for p in _children(self.proc.pid) if b"service.grpc" in _cmdline(p)]

    def spare_pids(self) -> list[int]:
        """The spare runtime waiting to replace a runtime that dies (TRAINSERVE_SPARE_RUNTIME=1)."""
        return [p for p in _children(self.proc.pid) if b"service.runtime" in _cmdline(p) and _spare(p)]

    def worker_pids(self) -> list[int]:
        """The HTTP workers' processes (children of the front end)."""
        front = [p for p in _children(self.proc.pid)
                 if b"service.runtime" not in _cmdline(p) and b"service.grpc" not in _cmdline(p)]
        return [w for f in front for w in _children(f) if b"resource_tracker" not in _cmdline(w)]

    def in_flight(self) -> float:
        """Requests the HTTP workers hold now, this scrape included."""
        text = requests.get(f"{self.url}/metrics", timeout=30).text
        return float(next(x for x in text.splitlines()
                          if x.startswith("trainserve_requests_in_flight ")).split()[1])

    def wait_in_flight(self, count: int, timeout: float = 60.0) -> None:
        """Until the workers hold ``count`` requests besides the scrape that asks."""
        deadline = time.monotonic() + timeout
        while self.in_flight() < count + 1:
            if time.monotonic() > deadline:
                raise AssertionError(f"{count} requests never reached the workers")
            time.sleep(0.05)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._fh.close()
        return self.proc.returncode


@pytest.fixture(scope="session")
def service_class() -> type[Service]:
    """The whole service as a class, for modules that start several at once (start, wait_ready, stop)."""
    return Service


@pytest.fixture(params=["granian", "gunicorn"])
def server_name(request: pytest.FixtureRequest) -> str:
    """Each supported front end in turn."""
    return request.param


@pytest.fixture
def serve(tmp_path: Path, server_name: str) -> Iterator[Callable[[dict[str, str]], Service]]:
    """Start the real service with extra environment, on each front end; stopped after the test."""
    started: list[Service] = []

    def start(env: dict[str, str]) -> Service:
        service = Service(env, tmp_path, server_name)
        started.append(service)
        service.wait_ready()
        return service

    yield start
    for service in started:
        service.stop()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, ui_root: Path) -> Iterator[Service]:
    """The whole service over ``ui_root`` (the shipped mnist-cnn and the tiny models), on granian, storing
    corrections in ``site.feedback_dir``."""
    feedback = tmp_path_factory.mktemp("feedback")
    service = Service({"TRAINSERVE_MODEL_DIR": str(ui_root), "TRAINSERVE_WORKERS": "1",
                       "TRAINSERVE_FEEDBACK_DIR": str(feedback)}, tmp_path_factory.mktemp("site"), "granian")
    service.feedback_dir = feedback
    try:
        service.wait_ready()
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="module", params=["granian", "gunicorn"])
def module_service(request: pytest.FixtureRequest,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[dict[str, str]], Service]]:
    """The whole service on each front end, started once per module and front end for the environment
    the module's tests ask for (they share it: the tests that call it must agree on the environment)."""
    started: dict[tuple, Service] = {}

    def start(env: dict[str, str]) -> Service:
        key = tuple(sorted(env.items()))
        if key not in started:
            started[key] = Service(env, tmp_path_factory.mktemp("service"), request.param)
            started[key].wait_ready()
        return started[key]

    yield start
    for service in started.values():
        service.stop()
