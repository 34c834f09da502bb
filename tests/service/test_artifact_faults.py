"""Broken artifacts never take the service down: each fault of the table below, present at start-up,
published while the service polls, and met again by a runtime restarted after a kill, is refused (log
line, load-failure count, reason in the repository index) while a valid version of the same model beside
it serves every request sent to it; a valid model published next to the broken ones loads; a rollback
within the grace period leaves the served version's metrics intact; a crash in native code while loading
refuses that artifact in the runtime started next. Bounded in count and time, on 127.0.0.1 only."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
import torch

from service.contract import formats
from service.contract.manifest import sha256_file

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TOKEN = "artifact-faults-management-token"
BODY = {"inputs": [{"name": "input", "datatype": "UINT8", "shape": [1, 784], "data": [0] * 784}]}


@pytest.fixture(scope="module")
def two_formats(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An artifact folder ``tiny/1`` holding a TorchScript and an exported file (a seeded, untrained CNN:
    these tests judge what is served, not how well)."""
    from training.export import ArtifactInfo, PixelClassifier, export
    from training.nets import build_net

    torch.manual_seed(0)
    model = PixelClassifier(build_net("cnn", (1, 28, 28), 10), (0.1307,), (0.3081,)).eval()
    info = ArtifactInfo(name="tiny", architecture="cnn", labels=tuple(str(d) for d in range(10)),
                        input_shape=(1, 28, 28), metrics={}, training={}, dataset={}, version="1")
    root = tmp_path_factory.mktemp("two-formats")
    return export(model, info, root, torch.zeros(4, 1, 28, 28), formats=("exported",))


# --- the faults ------------------------------------------------------------------------------------------
def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def _rewrite(folder: Path, data: dict) -> None:
    (folder / "manifest.json").write_text(json.dumps(data))


def truncated_with_their_checksums(folder: Path) -> None:
    """Every model file cut to a third, the manifest listing each cut file's real sha256 (issue 25, 1)."""
    data = _manifest(folder)
    for entry in data["formats"]:
        path = folder / entry["file"]
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
        entry["sha256"] = sha256_file(path)
    data["sha256"] = next(e["sha256"] for e in data["formats"] if e["format"] == "torchscript")
    _rewrite(folder, data)


def a_format_file_corrupted(folder: Path) -> None:
    """The exported file, which is not the one served, fails its checksum (issue 25, 2)."""
    with (folder / "model.pt2").open("r+b") as fh:
        fh.seek(200)
        fh.write(b"corrupted")


def a_manifest_that_is_not_json(folder: Path) -> None:
    (folder / "manifest.json").write_text('{"name": "cut short')


def a_model_file_missing(folder: Path) -> None:
    (folder / "model.pt2").unlink()


def a_warm_up_of_the_wrong_shape(folder: Path) -> None:
    """The manifest promises 11 outputs; the model gives 10."""
    data = _manifest(folder)
    data["labels"] = [*data["labels"], "ten"]
    data["output"]["shape"] = [11]
    _rewrite(folder, data)


FAULTS: dict[str, tuple[Callable[[Path], None], str]] = {  # model name: (fault, what the index says)
    "truncated": (truncated_with_their_checksums, "passed its checksum but cannot be served"),
    "corrupt-format": (a_format_file_corrupted, "model.pt2 has sha256"),
    "bad-manifest": (a_manifest_that_is_not_json, "is not valid JSON"),
    "missing-file": (a_model_file_missing, "model.pt2 does not exist"),
    "bad-warm-up": (a_warm_up_of_the_wrong_shape, "warm-up returned shape"),
}


def publish(source: Path, root: Path, name: str, version: str,
            fault: Callable[[Path], None] | None = None) -> Path:
    """A copy of ``source`` as ``name/version``, broken by ``fault``, renamed into place as export does."""
    staging = root / f".staging-{name}-{version}"
    shutil.copytree(source, staging)
    _rewrite(staging, _manifest(staging) | {"name": name, "version": version})
    if fault is not None:
        fault(staging)
    (root / name).mkdir(parents=True, exist_ok=True)
    return staging.rename(root / name / version)


# --- observing the service -------------------------------------------------------------------------------
def wait_for(what: str, check: Callable[[], object], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.1)


def _metric(url: str, name: str, **labels: str) -> float | None:
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    for line in requests.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith(f"{name}{{") and all(w in line for w in wanted):
            return float(line.rsplit(" ", 1)[1])
    return None


def _index(url: str) -> dict[str, tuple[str, str]]:
    entries = requests.post(f"{url}/v2/repository/index", headers={"Authorization": f"Bearer {TOKEN}"},
                            timeout=30).json()
    return {f"{e['name']}/{e['version']}": (e["state"], e["reason"]) for e in entries}


def _versions(url: str, name: str) -> list[str]:
    answer = requests.get(f"{url}/v2/models/{name}", timeout=30)
    return answer.json()["versions"] if answer.status_code == 200 else []


def assert_refused(service, version: str, runtimes: int) -> None:
    """Every fault's ``version`` refused by every runtime, with its reason in the index; version 1 serves."""
    for name, (_, reason) in FAULTS.items():
        wait_for(f"{name}/{version} refused by every runtime", lambda n=name: (_metric(
            service.url, "trainserve_model_load_failures_total", model=n, version=version) or 0) >= runtimes)
        wait_for(f"{name}/{version} in the index", lambda n=name: _index(service.url).get(
            f"{n}/{version}", ("", ""))[0] == "UNAVAILABLE")
        why = _index(service.url)[f"{name}/{version}"][1]
        assert reason in why, (name, why)
        assert re.search(rf"refused artifact \S*{name}/{version}: ", service.log.read_text())
        assert _versions(service.url, name) == ["1"]


class Traffic:
    """Threads asking every valid model (no version given) until stopped; bounded in count and time."""

    def __init__(self, url: str, models: list[str], threads: int = 3, limit: int = 30_000,
                 seconds: float = 400.0) -> None:
        self.url, self.models, self.limit, self.until = url, models, limit, time.monotonic() + seconds
        self.answers: Counter[tuple[str, int]] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._send, args=(i,)) for i in range(threads)]
        for thread in self._threads:
            thread.start()

    def _send(self, offset: int) -> None:
        with requests.Session() as session:
            n = offset
            while not self._stop.is_set() and n < self.limit and time.monotonic() < self.until:
                model = self.models[n % len(self.models)]
                n += len(self._threads)
                answer = session.post(f"{self.url}/v2/models/{model}/infer", json=BODY, timeout=60)
                with self._lock:
                    self.answers[(model, answer.status_code)] += 1

    def stop(self) -> Counter[tuple[str, int]]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)
        return self.answers


def serving(service) -> dict[int, set[str]]:
    """What each live runtime serves, from the last catalog it logged."""
    live = set(service.runtime_pids())
    latest: dict[int, set[str]] = {}
    for found in re.finditer(r"\[(\d+)\] service\.runtime\.table \[[^]]*\]: serving (.*) \(epoch",
                             service.log.read_text()):
        if int(found[1]) in live:
            latest[int(found[1])] = set(found[2].split(", "))
    return latest


def kill_and_wait(service, pid: int) -> None:
    """SIGKILL one runtime and wait until the one started in its place serves."""
    others = set(service.runtime_pids()) - {pid}
    os.kill(pid, signal.SIGKILL)
    wait_for(f"runtime {pid} replaced", lambda: len(set(serving(service)) - others - {pid}) == 1)


# --- the suite -------------------------------------------------------------------------------------------
def test_broken_versions_are_refused_at_start_up_while_polling_and_after_a_restart(serve, server_name,
                                                                                   two_formats, tmp_path):
    if server_name == "gunicorn":
        pytest.skip("artifacts are the runtime's affair: the front end does not matter")
    root = tmp_path / "models"
    publish(two_formats, root, "good", "1")
    for name, (fault, _) in FAULTS.items():
        publish(two_formats, root, name, "1")
        publish(two_formats, root, name, "2", fault)
    service = serve({"TRAINSERVE_MODEL_DIR": str(root), "TRAINSERVE_WORKERS": "2", "TRAINSERVE_RUNTIMES": "2",
                     "TRAINSERVE_VERSION_POLICY": "latest:1", "TRAINSERVE_POLL_INTERVAL_S": "0.3",
                     "TRAINSERVE_REQUEST_TIMEOUT_S": "8", "TRAINSERVE_MANAGEMENT_TOKEN": TOKEN})
    assert_refused(service, "2", runtimes=2)  # at start-up
    traffic = Traffic(service.url, ["good", *FAULTS])
    try:
        for name, (fault, _) in FAULTS.items():  # while polling
            publish(two_formats, root, name, "3", fault)
        assert_refused(service, "3", runtimes=2)
        publish(two_formats, root, "zz-model", "1")  # a valid model beside the broken ones loads
        wait_for("zz-model served", lambda: _versions(service.url, "zz-model") == ["1"])
        for pid in service.runtime_pids():  # each runtime killed in turn meets every fault again
            kill_and_wait(service, pid)
        assert_refused(service, "3", runtimes=4)
        assert _versions(service.url, "zz-model") == ["1"]
        roll_back(service, two_formats, root)
    finally:
        answers = traffic.stop()
    assert {status for _, status in answers} == {200}, answers
    assert {model for model, _ in answers} == {"good", *FAULTS}


def roll_back(service, source: Path, root: Path) -> None:
    """Version 2 published and removed within version 1's grace: version 1 serves again, and the timer
    set for its old copy leaves its metrics alone (issue 25, 3)."""
    publish(source, root, "good", "2")
    wait_for("good/2 served by both runtimes",
             lambda: [("good/2" in keys) for keys in serving(service).values()] == [True, True])
    shutil.rmtree(root / "good" / "2")
    wait_for("good/1 served again by both runtimes",
             lambda: [("good/1" in keys) for keys in serving(service).values()] == [True, True])
    log = lambda: service.log.read_text()  # noqa: E731
    wait_for("good/2 dropped by both runtimes", lambda: log().count("dropped good/2\n") >= 2)
    wait_for("good/1's old copies dropped by both runtimes",
             lambda: log().count("dropped an earlier copy of good/1;") + log().count("dropped good/1\n") >= 2)
    assert _metric(service.url, "trainserve_model_info", model="good", version="1") == 1.0
    assert _metric(service.url, "trainserve_model_info", model="good", version="2") == 0.0


# --- a crash in native code ------------------------------------------------------------------------------
def _lying_aoti_package(source: Path, folder: Path) -> None:
    """The shipped AOTInductor package, relabelled as built for AVX2 only: on a CPU without AVX-512 the
    checks pass and its code then dies of SIGILL, as a corrupt or mislabelled package would."""
    package, staged = folder / "model.aoti-cpu.pt2", folder / "relabelled.zip"
    with zipfile.ZipFile(source / "model.aoti-cpu.pt2") as src, zipfile.ZipFile(staged, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("wrapper_metadata.json"):
                data = json.dumps(json.loads(data) | {"AOTI_CPU_ISA": "AVX2"}).encode()
            dst.writestr(item, data)
    staged.replace(package)
    data = _manifest(folder)
    entry = next(e for e in data["formats"] if e["format"] == "aoti")
    entry.update(cpu_isa="avx2", sha256=sha256_file(package))
    _rewrite(folder, data)


def test_an_artifact_that_crashes_the_runtime_is_refused_by_the_next_one(serve, server_name, two_formats,
                                                                        tmp_path):
    if server_name == "gunicorn":
        pytest.skip("artifacts are the runtime's affair: the front end does not matter")
    if "avx512" in formats.cpu_isa_flags():
        pytest.skip("the shipped AOTInductor package runs on this CPU: it cannot be made to crash here")
    root = tmp_path / "models"
    shipped = REPO / "models" / "mnist-cnn" / "1"
    publish(two_formats, root, "crash", "1")
    publish(shipped, root, "crash", "2", lambda folder: _lying_aoti_package(shipped, folder))
    service = serve({"TRAINSERVE_MODEL_DIR": str(root), "TRAINSERVE_WORKERS": "1",
                     "TRAINSERVE_VERSION_POLICY": "latest:1", "TRAINSERVE_POLL_INTERVAL_S": "0.3"})
    log = service.log.read_text()  # at start-up: the first runtime crashed, the second refused it
    assert "died of SIGILL while loading; starting it again" in log
    assert re.search(r"refused artifact \S*crash/2: a model runtime died of SIGILL while loading it", log)
    assert _versions(service.url, "crash") == ["1"]
    publish(shipped, root, "crash", "3", lambda folder: _lying_aoti_package(shipped, folder))
    wait_for("crash/3 refused", lambda: re.search(  # while polling: the restarted runtime refuses it
        r"refused artifact \S*crash/3: a model runtime died of SIGILL", service.log.read_text()))
    service.wait_ready()
    answer = requests.post(f"{service.url}/v2/models/crash/infer", json=BODY, timeout=30)
    assert (answer.status_code, answer.json()["model_version"]) == (200, "1")
