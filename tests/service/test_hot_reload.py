"""Hot reload through the whole service: a version published into the model folder is served while
requests keep arriving, none of them fails, the version it replaces is retired as the policy says, a
version that fails its checks is refused while the served one keeps serving, and model control
"explicit" loads and unloads through Triton's repository API with the real tritonclient."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import requests

TOKEN = "hot-reload-management-token"
ROWS = np.zeros((1, 784), np.uint8).tolist()
BODY = {"inputs": [{"name": "input", "datatype": "UINT8", "shape": [1, 784], "data": ROWS}]}


def publish(source: Path, root: Path, version: str, tamper: bool = False) -> Path:
    """Put a copy of the artifact ``source`` into ``root`` as ``version``, the way export does: written
    beside the folder, renamed into place once complete."""
    staging = root / f".staging-{version}"
    shutil.copytree(source, staging)
    manifest = json.loads((staging / "manifest.json").read_text())
    manifest["version"] = version
    (staging / "manifest.json").write_text(json.dumps(manifest))
    if tamper:
        with (staging / manifest["file"]).open("ab") as fh:
            fh.write(b"tampered")
    target = root / source.parent.name / version
    staging.rename(target)
    return target


def wait_for(what: str, check, timeout: float = 90.0) -> None:
    """Poll ``check`` until true, for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.1)


class Traffic:
    """Threads sending inference requests without a version until stopped (bounded in count and time)."""

    def __init__(self, url: str, threads: int = 4, limit: int = 20_000, seconds: float = 240.0) -> None:
        self.url, self.limit, self.until = url, limit, time.monotonic() + seconds
        self.answers: list[tuple[int, str]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._send) for _ in range(threads)]
        for thread in self._threads:
            thread.start()

    def _send(self) -> None:
        with requests.Session() as session:
            while (not self._stop.is_set() and len(self.answers) < self.limit
                   and time.monotonic() < self.until):
                r = session.post(f"{self.url}/v2/models/mnist-tiny/infer", json=BODY, timeout=60)
                version = r.json().get("model_version", "") if r.status_code == 200 else r.text
                with self._lock:
                    self.answers.append((r.status_code, version))

    def versions(self) -> list[str]:
        with self._lock:
            return [v for status, v in self.answers if status == 200]

    def stop(self) -> Counter:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)
        return Counter(self.answers)


def _metric(url: str, name: str, labels: str) -> float | None:
    for line in requests.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith(f"{name}{{") and labels in line:
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.fixture
def repository(tmp_path: Path, artifact_root: Path) -> Path:
    """A model folder holding mnist-tiny version 1 only."""
    root = tmp_path / "models"
    (root / "mnist-tiny").mkdir(parents=True)
    shutil.copytree(artifact_root / "mnist-tiny" / "1", root / "mnist-tiny" / "1")
    return root


@pytest.fixture
def server_name() -> str:
    """Hot reload lives in the runtime and its client, the same under either front end: one is enough."""
    return "granian"


@pytest.fixture
def start(serve, repository):
    """The whole service over ``repository``, polling it often, serving the newest version only."""
    def begin(**env: str):
        return serve({"TRAINSERVE_MODEL_DIR": str(repository), "TRAINSERVE_WORKERS": "2",
                      "TRAINSERVE_POLL_INTERVAL_S": "0.2", "TRAINSERVE_REQUEST_TIMEOUT_S": "5",
                      "TRAINSERVE_VERSION_POLICY": "latest:1", "TRAINSERVE_MANAGEMENT_TOKEN": TOKEN} | env)
    return begin


@pytest.mark.parametrize("runtimes", ["1", "2"])
def test_a_published_version_takes_over_under_load_with_no_failed_request(start, repository, artifact_root,
                                                                          runtimes):
    # With two runtimes each follows the folder on its own: requests go to one that serves their version.
    service = start(TRAINSERVE_RUNTIMES=runtimes)
    traffic = Traffic(service.url)
    wait_for("traffic on version 1", lambda: len(traffic.versions()) >= 20)
    publish(artifact_root / "mnist-tiny" / "2", repository, "2")
    wait_for("version 2 served", lambda: traffic.versions()[-1:] == ["2"])
    # Every runtime has swapped (each logs its catalog once the change is applied) before traffic stops.
    wait_for("version 2 served by every runtime",
             lambda: service.log.read_text().count("serving mnist-tiny/2 (epoch") >= int(runtimes))
    seen = len(traffic.answers)
    wait_for("more traffic on version 2", lambda: len(traffic.answers) >= seen + 20)
    answers = traffic.stop()
    assert {status for status, _ in answers} == {200}, answers
    assert {version for _, version in answers} == {"1", "2"}
    # The policy (latest:1) retires version 1: gone from the API now, dropped once its grace ends.
    assert requests.get(f"{service.url}/v2/models/mnist-tiny/versions/1", timeout=30).status_code == 404
    meta = requests.get(f"{service.url}/v2/models/mnist-tiny", timeout=30).json()
    assert (meta["versions"], meta["parameters"]["default_version"]) == (["2"], "2")
    assert meta["parameters"]["version_policy"] == "latest:1"
    # Each runtime drops it once its grace has passed (each logs it after its metrics say so).
    wait_for("version 1 dropped by every runtime",
             lambda: service.log.read_text().count("dropped mnist-tiny/1") == int(runtimes))
    assert _metric(service.url, "trainserve_model_info", 'version="1"') == 0.0
    assert _metric(service.url, "trainserve_model_info", 'version="2"') == 1.0


def test_a_version_that_fails_its_checks_is_refused_and_the_served_one_keeps_serving(start, repository,
                                                                                     artifact_root):
    service = start()
    publish(artifact_root / "mnist-tiny" / "2", repository, "3", tamper=True)
    wait_for("the refusal counted", lambda: _metric(
        service.url, "trainserve_model_load_failures_total", 'version="3"') == 1.0)
    assert "refused artifact" in service.log.read_text()
    r = requests.post(f"{service.url}/v2/models/mnist-tiny/infer", json=BODY, timeout=30)
    assert (r.status_code, r.json()["model_version"]) == (200, "1")

    def index_states() -> dict[str, tuple[str, str]]:
        index = requests.post(f"{service.url}/v2/repository/index", timeout=30,
                              headers={"Authorization": f"Bearer {TOKEN}"}).json()
        return {e["version"]: (e["state"], e["reason"]) for e in index}

    # The metric counts at the refusal; the catalog with its reason follows between two batches.
    wait_for("the refusal in the index", lambda: "sha256" in index_states().get("3", ("", ""))[1])
    states = index_states()
    assert states["1"] == ("READY", "")
    assert states["3"][0] == "UNAVAILABLE" and "sha256" in states["3"][1]
    # Polling does not load it again: refused once per artifact, until the folder changes.
    time.sleep(1.0)
    assert _metric(service.url, "trainserve_model_load_failures_total", 'version="3"') == 1.0


def test_explicit_model_control_loads_and_unloads_through_tritonclient(start, repository, artifact_root):
    httpclient = pytest.importorskip("tritonclient.http")
    from tritonclient.utils import InferenceServerException

    service = start(TRAINSERVE_MODEL_CONTROL="explicit")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    client = httpclient.InferenceServerClient(service.url.removeprefix("http://"))
    try:
        assert client.is_model_ready("mnist-tiny")
        publish(artifact_root / "mnist-tiny" / "2", repository, "2")
        time.sleep(1.0)  # explicit: nothing changes by itself
        assert client.get_model_metadata("mnist-tiny")["versions"] == ["1"]
        client.load_model("mnist-tiny", headers=auth)
        assert client.get_model_metadata("mnist-tiny")["versions"] == ["2"]
        client.unload_model("mnist-tiny", headers=auth)
        assert not client.is_model_ready("mnist-tiny")
        r = requests.post(f"{service.url}/v2/models/mnist-tiny/infer", json=BODY, timeout=30)
        assert r.status_code == 404
        index = client.get_model_repository_index(headers=auth)
        assert {(e["version"], e["state"]) for e in index} == {("1", "UNAVAILABLE"), ("2", "UNAVAILABLE")}
        client.load_model("mnist-tiny", headers=auth)
        assert client.is_model_ready("mnist-tiny", "2")
        with pytest.raises(InferenceServerException, match="not in the model repository"):
            client.load_model("mnist-tin", headers=auth)
    finally:
        client.close()
    # A name is a folder directly under the model folder, never a path.
    for name in ("..", "%2e%2e", "mnist-tiny%2F1", ".staging-2"):
        r = requests.post(f"{service.url}/v2/repository/models/{name}/load", headers=auth, timeout=30)
        assert r.status_code == 404, (name, r.status_code, r.text)


def test_poll_model_control_refuses_load_with_a_conflict(start):
    service = start()
    r = requests.post(f"{service.url}/v2/repository/models/mnist-tiny/load", timeout=30,
                      headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 409 and "TRAINSERVE_MODEL_CONTROL=explicit" in r.json()["error"]
    r = requests.post(f"{service.url}/v2/repository/models/mnist-tiny/load", timeout=30)
    assert r.status_code == 401
