"""Rollouts through the whole service, under real traffic on 127.0.0.1: set-default and rollback in effect
by the time the API answers, with no failed request; a canary's share and a client's stable version
through both doors; a shadow that changes no answer and whose agreement the metrics count exactly; a
broken canary rolled back by itself; changes made with the CLI, and a state that survives a restart."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import requests

from service.contract import routing_store
from service.routing import split

TOKEN = "rollout-management-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROUTING = "/v2/repository/models/mnist-tiny/routing"


def infer(session: requests.Session, url: str, image: np.ndarray, door: str, version: str | None = None,
          key: str | None = None) -> tuple[int, str, dict]:
    """One request for one image through a door: "hot" (OIP infer, served on the event loop under granian)
    or "flask" (v1 predict with a query string, which the Flask app serves under either front end);
    (status, the version that answered, the answer)."""
    path = "/v1/models/mnist-tiny" + (f"/versions/{version}" if version else "")
    headers = {split.CLIENT_HEADER: key} if key else {}
    if door == "hot":
        path = path.replace("/v1/", "/v2/") + "/infer"
        body = {"inputs": [{"name": "input", "datatype": "UINT8", "shape": [1, 1, 28, 28],
                            "data": image.ravel().tolist()}]}
    else:
        path += ":predict?top_k=10"
        body = {"instances": [image.tolist()], "dtype": "uint8"}
    r = session.post(url + path, json=body, headers=headers, timeout=60)
    answer = r.json()
    return r.status_code, str(answer.get("model_version", answer.get("version", ""))), answer


def label(answer: dict) -> str:
    """The label an answer gives, from either door."""
    if "outputs" in answer:
        return next(o["data"][0] for o in answer["outputs"] if o["name"] == "label")
    return answer["predictions"][0]["label"]


def send_all(url: str, jobs: list[dict], threads: int = 8) -> list[tuple[int, str, dict]]:
    """``infer`` for every job (its keyword arguments besides the session and url), ``threads`` at a time,
    each thread with a session of its own; the answers in the jobs' order."""
    chunks = [jobs[i::threads] for i in range(threads)]
    results: list[list[tuple[int, str, dict]]] = [[] for _ in chunks]

    def run(index: int) -> None:
        with requests.Session() as session:
            results[index] = [infer(session, url, **job) for job in chunks[index]]

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=240)
    ordered: list[tuple[int, str, dict]] = [None] * len(jobs)  # type: ignore[list-item]
    for index, chunk in enumerate(results):
        ordered[index::threads] = chunk
    return ordered


class Load:
    """Threads sending single-image requests through both doors until stopped (bounded in count and
    time); every answer is kept with the moment its request was sent."""

    def __init__(self, url: str, images: np.ndarray, threads: int = 4, limit: int = 20_000,
                 seconds: float = 200.0) -> None:
        self.url, self.images, self.limit, self.until = url, images, limit, time.monotonic() + seconds
        self.answers: list[tuple[float, float, int, str]] = []  # (sent, answered, status, version)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._send, args=(i,)) for i in range(threads)]
        for thread in self._threads:
            thread.start()

    def _send(self, index: int) -> None:
        with requests.Session() as session:
            n = index
            while (not self._stop.is_set() and len(self.answers) < self.limit
                   and time.monotonic() < self.until):
                sent = time.monotonic()
                try:
                    status, version, _ = infer(session, self.url, self.images[n % len(self.images)],
                                               "hot" if n % 2 else "flask")
                except requests.RequestException:
                    status, version = 0, ""  # no answer at all: counted as a failure
                with self._lock:
                    self.answers.append((sent, time.monotonic(), status, version))
                n += len(self._threads)

    def count(self) -> int:
        with self._lock:
            return len(self.answers)

    def wait_more(self, count: int, timeout: float = 120.0) -> None:
        """Until ``count`` more answers have come."""
        target = self.count() + count
        wait_for(f"{count} more answers", lambda: self.count() >= target, timeout)

    def between(self, sent_after: float, answered_before: float = float("inf")) -> list[tuple[int, str]]:
        """(status, version) of every request sent after ``sent_after`` and answered before
        ``answered_before``."""
        with self._lock:
            return [(status, version) for sent, answered, status, version in self.answers
                    if sent > sent_after and answered < answered_before]

    def stop(self) -> Counter:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)
        return Counter((status, version) for _, _, status, version in self.answers)


def wait_for(what: str, check, timeout: float = 90.0) -> None:
    """Poll ``check`` until true, for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.05)


def metric(url: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels``."""
    total = 0.0
    for line in requests.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture
def repository(tmp_path: Path, artifact_root: Path, candidate_root: Path):
    """A model folder with the versions of mnist-tiny a test asks for (1, 2: the same net; 3: a weaker
    one; 4: one that raises on some inputs)."""
    def make(*versions: str) -> Path:
        root = tmp_path / "models"
        (root / "mnist-tiny").mkdir(parents=True)
        for version in versions:
            source = artifact_root if version in ("1", "2") else candidate_root
            shutil.copytree(source / "mnist-tiny" / version, root / "mnist-tiny" / version)
        return root
    return make


@pytest.fixture
def start(serve):
    """The whole service over a repository: the newest version only (the routing keeps its own loaded),
    the management API on, no spare runtime (less CPU while the tests run)."""
    def begin(root: Path, **env: str):
        return serve({"TRAINSERVE_MODEL_DIR": str(root), "TRAINSERVE_WORKERS": "2",
                      "TRAINSERVE_VERSION_POLICY": "latest:1", "TRAINSERVE_MANAGEMENT_TOKEN": TOKEN,
                      "TRAINSERVE_SPARE_RUNTIME": "0", "TRAINSERVE_REQUEST_TIMEOUT_S": "10"} | env)
    return begin


def change(url: str, method: str, path: str, body: dict | None = None) -> dict:
    """A routing change through the management API; its answer (200 asserted)."""
    r = requests.request(method, f"{url}{ROUTING}{path}", json=body, headers=AUTH, timeout=150)
    assert r.status_code == 200, r.text
    return r.json()


def test_set_default_and_rollback_are_in_effect_when_the_api_answers_with_no_failed_request(
        start, repository, mnist):
    service = start(repository("1", "2"))
    load = Load(service.url, mnist["test_x"][:64])
    try:
        load.wait_more(40)
        assert {v for _, v in load.between(0)} == {"2"}  # the newest, with no routing state
        answered = change(service.url, "PUT", "/default", {"version": "1"})  # 1 is loaded for it first
        pinned = time.monotonic()
        assert answered["effective"]["default"] == "1" and answered["state"]["previous"] == [None]
        load.wait_more(200)
        asked = time.monotonic()
        answered = change(service.url, "POST", "/rollback")
        rolled_back = time.monotonic()
        assert answered["effective"]["default"] == "2" and answered["state"]["default"] is None
        load.wait_more(200)
    finally:
        answers = load.stop()
    assert {status for status, _ in answers} == {200}, answers  # not one failed request
    # Every request sent after a change's answer got the new default (and before the next change).
    pinned_answers = load.between(pinned, answered_before=asked)
    assert {v for _, v in pinned_answers} == {"1"} and len(pinned_answers) >= 100
    assert {v for _, v in load.between(rolled_back)} == {"2"}
    history = requests.get(f"{service.url}/v1/models/mnist-tiny/routing", timeout=30).json()["history"]
    assert [(h["action"], h["by"], h["default"]) for h in history] == [("set-default", "api", "1"),
                                                                       ("rollback", "api", None)]


def test_a_canary_gets_its_share_by_client_key_through_both_doors(start, repository, mnist):
    service = start(repository("1", "2"))
    # Version 2 is the newest and serves: made a canary, the version before it is pinned as the default.
    state = change(service.url, "PUT", "/canary", {"version": "2", "percent": 10})["state"]
    assert (state["default"], state["canary"]["version"], state["canary"]["percent"]) == ("1", "2", 10)
    image = mnist["test_x"][0]
    keys = [f"client-{i}" for i in range(2500)]
    doors = ("hot", "flask")
    keyed = send_all(service.url, [{"image": image, "door": doors[i % 2], "key": k}
                                   for i, k in enumerate(keys)])
    unkeyed = send_all(service.url, [{"image": image, "door": doors[i % 2]} for i in range(2500)])
    assert {status for status, _, _ in keyed + unkeyed} == {200}
    # A keyed request gets what the pure rule gives its key, whichever door it came through.
    expected = ["2" if split.point("mnist-tiny", key) < 0.10 else "1" for key in keys]
    assert [version for _, version, _ in keyed] == expected
    share = sum(version == "2" for _, version, _ in keyed + unkeyed) / 5000
    assert 0.08 <= share <= 0.12, share
    # A client sees one version, through either door, every time; a version in the URL always wins.
    chosen = [k for k, v in zip(keys, expected, strict=True) if v == "2"][:10] + keys[:10]
    again = send_all(service.url, [{"image": image, "door": d, "key": k} for k in chosen for d in doors * 5])
    by_key = {k: {v for _, v, _ in again[i * 10:(i + 1) * 10]} for i, k in enumerate(chosen)}
    assert by_key == {k: {expected[keys.index(k)]} for k in chosen}
    named = send_all(service.url, [{"image": image, "door": d, "version": "1", "key": k}
                                   for k in chosen for d in doors])
    assert {v for _, v, _ in named} == {"1"}
    served = sum(v == "2" for _, v, _ in keyed + unkeyed + again)
    wait_for("every canary answer counted", lambda: metric(
        service.url, "trainserve_routed_requests_total", version="2", role="canary") >= served)
    assert metric(service.url, "trainserve_routed_requests_total", version="2", role="canary") == served


def test_a_shadow_changes_no_answer_and_its_agreement_is_counted_exactly(start, repository, mnist):
    service = start(repository("1", "3"))
    change(service.url, "PUT", "/default", {"version": "1"})  # 3 is the newest: 1 is loaded for this
    images, doors = mnist["test_x"][:120], ("hot", "flask")
    with requests.Session() as session:
        before = [infer(session, service.url, image, doors[i % 2]) for i, image in enumerate(images)]
        change(service.url, "PUT", "/shadow", {"version": "3", "percent": 100})
        # One at a time: a worker never holds more copies than its bound, so none is dropped.
        during = [infer(session, service.url, image, doors[i % 2]) for i, image in enumerate(images)]
        candidate = [infer(session, service.url, image, doors[i % 2], version="3")
                     for i, image in enumerate(images)]
    assert during == before  # status, version and every byte of every answer
    agree = sum(label(a) == label(b) for (_, _, a), (_, _, b) in zip(before, candidate, strict=True))
    assert 0 < agree < len(images)  # the weaker net labels some digits otherwise
    wait_for("every copy compared", lambda: metric(service.url, "trainserve_compared_examples_total",
                                                   version="3", role="shadow") >= len(images))
    assert metric(service.url, "trainserve_compared_examples_total", version="3", outcome="agree") == agree
    assert metric(service.url, "trainserve_compared_examples_total", version="3",
                  outcome="disagree") == len(images) - agree
    assert metric(service.url, "trainserve_comparison_copies_total", version="3", outcome="dropped") == 0
    page = requests.get(f"{service.url}/v1/models/mnist-tiny/routing", timeout=30).json()
    assert page["versions"]["3"]["agreement"]["shadow"]["agree"] == agree
    assert page["versions"]["3"]["requests"]["by_role"] == {"named": {"success": len(images)}}


@pytest.mark.parametrize("server_name", ["granian"])
def test_a_broken_canary_is_rolled_back_by_itself_and_nothing_after_reaches_it(start, repository, mnist):
    service = start(repository("1", "4"))
    change(service.url, "PUT", "/default", {"version": "1"})
    change(service.url, "PUT", "/canary", {"version": "4", "percent": 50, "budget": {
        "max_error_rate": 0.10, "max_disagreement": None, "min_requests": 30}})
    images = mnist["test_x"][:64].copy()
    images[::2, 0, 0] = 255  # half of them make version 4 raise (a bright top-left pixel)
    load = Load(service.url, images)
    try:
        wait_for("the rollback counted", lambda: metric(
            service.url, "trainserve_canary_rollbacks_total", version="4", reason="errors") == 1, 120)
        counted = time.monotonic()
        load.wait_more(300)
    finally:
        answers = load.stop()
    assert answers[(500, "")] > 0  # the canary failed, before
    assert set(load.between(counted)) == {(200, "1")}  # nothing sent after the rollback reached it
    document = requests.get(f"{service.url}/v1/models/mnist-tiny/routing", timeout=30).json()
    assert document["state"]["canary"] is None and document["effective"]["canary"] is None
    last = document["history"][-1]
    assert (last["action"], last["by"]) == ("rollback-canary", "automatic rollback")
    assert "error rate" in last["reason"] and "above its budget of 10.0%" in last["reason"]
    assert "rolled back automatically" in service.log.read_text()


@pytest.mark.parametrize("server_name", ["granian"])
def test_the_cli_changes_a_running_service_and_the_state_survives_a_restart(start, repository, mnist,
                                                                            repo_root):
    root = repository("1", "2")
    cli = [sys.executable, "-m", "service.routing", "--model-dir", str(root)]
    done = subprocess.run([*cli, "set-default", "mnist-tiny", "1"], cwd=repo_root, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    service = start(root)  # started after: the pinned version is loaded and is the default from the start
    image = mnist["test_x"][0]
    with requests.Session() as session:
        assert infer(session, service.url, image, "hot")[:2] == (200, "1")
        done = subprocess.run([*cli, "shadow", "mnist-tiny", "2", "100"], cwd=repo_root, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        wait_for("the shadow taken", lambda: requests.get(f"{service.url}/v1/models/mnist-tiny/routing",
                                                          timeout=30).json()["effective"]["shadow"])
        assert infer(session, service.url, image, "flask")[:2] == (200, "1")
    wait_for("the copy compared", lambda: metric(service.url, "trainserve_compared_examples_total",
                                                 version="2", role="shadow", outcome="agree") == 1)
    refused = subprocess.run([*cli, "stop-canary", "mnist-tiny"], cwd=repo_root, capture_output=True,
                             text=True, timeout=60)
    assert refused.returncode == 1 and "no canary to stop" in refused.stderr
    shown = subprocess.run([*cli, "show", "mnist-tiny"], cwd=repo_root, capture_output=True, text=True,
                           timeout=60)
    assert '"by": "cli"' in shown.stdout
    assert routing_store.read(root, "mnist-tiny")[0].shadow.version == "2"


def test_the_routing_api_needs_the_token_and_says_what_it_refuses(make_app, artifact_root, tmp_path):
    root = tmp_path / "models"
    shutil.copytree(artifact_root / "mnist-tiny", root / "mnist-tiny")
    client = make_app(model_dir=root, management_token=TOKEN).test_client()
    assert client.put(f"{ROUTING}/default", json={"version": "1"}).status_code == 401
    wrong = {"Authorization": "Bearer not-the-token"}
    assert client.put(f"{ROUTING}/default", json={"version": "1"}, headers=wrong).status_code == 403
    refused = [("put", "/default", {"version": 1}, 400, "'version' must be"),
               ("put", "/default", {"version": "9"}, 404, "no version '9'"),
               ("put", "/canary", {"version": "2", "percent": 0}, 400, "percent must be"),
               ("put", "/canary", {"version": "2", "percent": 10, "budget": {"max_error_rate": 2}}, 400,
                "max_error_rate"),
               ("put", "/shadow", {"version": "2", "percent": 10, "extra": 1}, 400, "unknown field"),
               ("post", "/rollback", None, 409, "no earlier default"),
               ("delete", "/canary", None, 409, "no canary to stop")]
    for method, path, body, status, says in refused:
        answer = getattr(client, method)(f"{ROUTING}{path}", json=body, headers=AUTH)
        assert (answer.status_code, says in answer.json["error"]) == (status, True), (path, answer.json)
    assert not (root / "mnist-tiny" / routing_store.ROUTING_FILE).exists()  # nothing refused was written
    answer = client.put(f"{ROUTING}/default", json={"version": "1"}, headers=AUTH)
    assert answer.status_code == 200 and answer.json["effective"]["default"] == "1"
    conflict = client.put(f"{ROUTING}/canary", json={"version": "1", "percent": 10}, headers=AUTH)
    assert conflict.status_code == 409 and "is the default" in conflict.json["error"]
    shown = client.get("/v1/models/mnist-tiny/routing")  # public, as the model listing
    assert shown.status_code == 200 and shown.json["history"][-1]["action"] == "set-default"
    assert client.get("/v1/models/nope/routing").status_code == 404
