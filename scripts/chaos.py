"""Chaos: the whole service (``python -m service`` on 127.0.0.1, over a copy of models/) under mixed valid
traffic for a set time, while HTTP workers and model runtimes are killed at random and good, broken and
truncated versions are published into its model folder and removed (``make chaos``; not in CI).

    python scripts/chaos.py --seconds 600                     # the 10-minute run (docs/operations.md#chaos)
    python scripts/chaos.py --seconds 60 --kill-every 10      # a short one
    python scripts/chaos.py --recovery 10                     # only: kill the idle runtime 10 times

Prints the count of every status; requests lost (a connection closed without an answer), split into those
on connections a killed HTTP worker held and the rest, which must be 0; answers from a version never
published good, which must be 0; the time to ready after each kill; the versions refused; and the RSS of
every process at start and end. The same as JSON in bench-results/chaos.json.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
from soak import descendants, is_spare, rss_mib

REPO = Path(__file__).resolve().parents[1]
MODEL = "mnist-cnn"


def requests_to_send() -> list[tuple[str, str, str, dict[str, str], bytes]]:
    """The mix: (kind, method, path, headers, body), every one valid, from the samples and a few digits."""
    png, jpeg = ((REPO / "samples" / name).read_bytes() for name in ("mnist-7.png", "mnist-0.jpg"))
    parts = b"".join(b'--chaos\r\nContent-Disposition: form-data; name="f%d"; filename="%d"\r\n'
                     b"Content-Type: image/png\r\n\r\n%s\r\n" % (i, i, png) for i in range(2))
    parts += b"--chaos--\r\n"
    pixels = np.zeros((2, 784), np.uint8)
    pixels[:, 300:320] = 255
    oip = {"inputs": [{"name": "input", "shape": [2, 784], "datatype": "UINT8",
                       "data": pixels.ravel().tolist()}]}
    header = json.dumps({"inputs": [{"name": "input", "shape": [2, 784], "datatype": "UINT8",
                                     "parameters": {"binary_data_size": pixels.nbytes}}]}).encode()
    v1, v2 = f"/v1/models/{MODEL}", f"/v2/models/{MODEL}"
    return [
        ("classify-png", "POST", f"{v1}:classify", {"Content-Type": "image/png"}, png),
        ("classify-jpeg", "POST", f"{v1}:classify?top_k=3", {"Content-Type": "image/jpeg"}, jpeg),
        ("classify-multipart", "POST", f"{v1}:classify",
         {"Content-Type": "multipart/form-data; boundary=chaos"}, parts),
        ("predict-json", "POST", f"{v1}:predict", {"Content-Type": "application/json"},
         json.dumps({"instances": pixels.tolist(), "dtype": "uint8"}).encode()),
        ("infer-json", "POST", f"{v2}/infer", {"Content-Type": "application/json"}, json.dumps(oip).encode()),
        ("infer-binary", "POST", f"{v2}/infer", {"Inference-Header-Content-Length": str(len(header))},
         header + pixels.tobytes()),
        ("metadata", "GET", v2, {}, b""),
    ]


class Traffic:
    """Closed-loop clients, each on a kept-alive connection, sending the mix until stopped."""

    def __init__(self, port: int, clients: int) -> None:
        self.port, self.mix = port, requests_to_send()
        self.statuses: Counter[str] = Counter()
        self.versions: Counter[str] = Counter()
        self.lost: list[int] = []  # the client port of each connection that closed without an answer
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(seed,)) for seed in range(clients)]
        for thread in self._threads:
            thread.start()

    def _run(self, seed: int) -> None:
        pick, conn, local = random.Random(seed), None, 0
        while not self.stop.is_set():
            kind, method, path, headers, body = pick.choice(self.mix)
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                    conn.connect()
                    local = conn.sock.getsockname()[1]
                conn.request(method, path, body=body or None, headers=headers)
                answer = conn.getresponse()
                data = answer.read()
            except (OSError, http.client.HTTPException):
                with self._lock:
                    self.lost.append(local)
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.05)  # a refused connection (no front end at all) must not spin
                continue
            self._count(kind, answer.status, data)
            if answer.will_close:
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def _count(self, kind: str, status: int, data: bytes) -> None:
        version = None
        if status == 200 and kind != "metadata":
            answer = json.loads(data)
            version = answer.get("version") or answer.get("model_version")
        with self._lock:
            self.statuses[f"{kind} {status}"] += 1
            if version is not None:
                self.versions[version] += 1

    def join(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=60)


def client_ports(pid: int, port: int) -> set[int]:
    """The client-side ports of the TCP connections process ``pid`` holds to the service's ``port``."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[9] in inodes and int(fields[1].split(":")[1], 16) == port:
            ports.add(int(fields[2].split(":")[1], 16))
    return ports


class Service:
    """``python -m service`` from ``checkout`` over ``model_dir``; its processes, readiness and log."""

    def __init__(self, checkout: Path, model_dir: Path, port: int, folder: Path, env: dict[str, str]) -> None:
        self.port, self.log_path = port, folder / "service.log"
        env = os.environ | {"TRAINSERVE_BIND": f"127.0.0.1:{port}", "TRAINSERVE_GRPC_BIND": "off",
                            "TRAINSERVE_MODEL_DIR": str(model_dir),
                            "TRAINSERVE_POLL_INTERVAL_S": "1"} | env
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=checkout, env=env,
                                     stdout=self._log, stderr=subprocess.STDOUT)

    def ready(self) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", "/readyz")
            return conn.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    def wait_ready(self, seconds: float = 120) -> None:
        deadline = time.monotonic() + seconds
        while not self.ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the service is not ready: {self.log_path}")
            time.sleep(0.02)

    def processes(self) -> dict[str, list[int]]:
        """pids by kind: runtime, spare (a runtime waiting to replace one), worker (the front end's
        children), front-end."""
        kinds: dict[str, list[int]] = {"runtime": [], "spare": [], "front-end": [], "worker": []}
        for pid in _children(self.proc.pid):
            cmd = _cmdline(pid)
            if b"service.runtime" in cmd:
                kinds["spare" if is_spare(pid) else "runtime"].append(pid)
            else:
                kinds["front-end"].append(pid)
                kinds["worker"] += [w for w in _children(pid) if b"resource_tracker" not in _cmdline(w)]
        return kinds

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)
        self._log.close()


def _children(pid: int) -> list[int]:
    try:
        tasks = Path(f"/proc/{pid}/task").iterdir()
        return [int(c) for t in tasks for c in (t / "children").read_text().split()]
    except OSError:
        return []


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def kill(service: Service, kind: str, killed_ports: set[int]) -> dict:
    """kill -9 one process of ``kind``; the seconds until one has replaced it and the service is ready."""
    before = service.processes()[kind]
    pid = random.choice(before)
    ports = client_ports(pid, service.port) if kind == "worker" else set()
    killed_ports |= ports
    started = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    deadline = started + 120
    while True:
        now = service.processes()[kind]
        if len(now) == len(before) and pid not in now and service.ready():
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"no {kind} replaced pid {pid} within 120 s: {service.log_path}")
        time.sleep(0.02)
    return {"kind": kind, "pid": pid, "ready_after_s": round(time.monotonic() - started, 2),
            "connections": len(ports)}


class Publisher:
    """Publishes good, broken and truncated versions of the model into the folder, and removes them."""

    def __init__(self, source: Path, root: Path) -> None:
        self.source, self.root = source, root
        self.good, self.published, self.counts = {"1"}, {}, Counter()
        self.next = 2

    def act(self, pick: random.Random) -> None:
        actions = ["good", "broken", "truncated"] if len(self.published) < 3 else []
        action = pick.choice(actions + ["remove"] * bool(self.published))
        if action == "remove":
            version = pick.choice(sorted(self.published))
            gone = self.root / MODEL / f".removed-{version}"
            (self.root / MODEL / version).rename(gone)  # it disappears at once, as a whole
            shutil.rmtree(gone)
            del self.published[version]
        else:
            version, self.next = str(self.next), self.next + 1
            self._publish(version, action)
            self.published[version] = action
            if action == "good":
                self.good.add(version)
        self.counts[action] += 1

    def _publish(self, version: str, action: str) -> None:
        staging = self.root / MODEL / f".staging-{version}"
        shutil.copytree(self.source, staging)
        manifest = json.loads((staging / "manifest.json").read_text())
        manifest["version"] = version
        if action == "broken":  # one format file no longer matches its checksum
            with (staging / manifest["formats"][-1]["file"]).open("r+b") as fh:
                fh.seek(100)
                fh.write(b"broken")
        elif action == "truncated":  # every file cut short, the manifest listing the cut files' checksums
            for entry in manifest["formats"]:
                path = staging / entry["file"]
                path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
                entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
                if entry["format"] == "torchscript":
                    manifest["sha256"] = entry["sha256"]
        (staging / "manifest.json").write_text(json.dumps(manifest))
        staging.rename(self.root / MODEL / version)


def chaos(service: Service, args: argparse.Namespace, model_dir: Path) -> dict:
    """Traffic for ``args.seconds`` with kills and publications at random; the report."""
    pick = random.Random(args.seed)
    traffic = Traffic(service.port, args.clients)
    time.sleep(5)  # warm: the front end starts its threads on demand
    report = {"seconds": args.seconds, "clients": args.clients,
              "rss_start_mib": rss_mib([service.proc.pid, *descendants(service.proc.pid)])}
    publisher, kills, killed_ports = Publisher(model_dir / MODEL / "1", model_dir), [], set()
    end = time.monotonic() + args.seconds
    next_kill = time.monotonic() + pick.expovariate(1 / args.kill_every)
    while (now := time.monotonic()) < end:
        if now >= next_kill:
            kills.append(kill(service, pick.choice(["worker", "runtime"]), killed_ports))
            next_kill = time.monotonic() + pick.expovariate(1 / args.kill_every)
        publisher.act(pick)
        time.sleep(min(pick.uniform(0.5, 1.5) * args.publish_every, max(0.0, end - time.monotonic())))
    traffic.join()
    service.wait_ready()
    report["rss_end_mib"] = rss_mib([service.proc.pid, *descendants(service.proc.pid)])
    lost_to_workers = sum(port in killed_ports for port in traffic.lost)
    log = service.log_path.read_text()
    return report | {
        "statuses": dict(sorted(traffic.statuses.items())), "requests": sum(traffic.statuses.values()),
        "lost": len(traffic.lost), "lost_on_killed_workers_connections": lost_to_workers,
        "lost_otherwise": len(traffic.lost) - lost_to_workers,
        "versions_answered": dict(traffic.versions),
        "answers_from_versions_never_good": sum(n for v, n in traffic.versions.items()
                                                if v not in publisher.good),
        "published": dict(publisher.counts), "refused_log_lines": log.count("refused artifact"),
        "kills": kills, "ready_after_kill_s": _spread([k["ready_after_s"] for k in kills]),
    }


def recovery(service: Service, times: int) -> dict:
    """Kill the idle runtime ``times`` times, 3 s apart; the time to ready after each."""
    kills = []
    for _ in range(times):
        time.sleep(3)
        kills.append(kill(service, "runtime", set())["ready_after_s"])
        print(f"runtime killed: ready again after {kills[-1]:.2f} s", flush=True)
    return {"recovery_kills": kills, "ready_after_kill_s": _spread(kills)}


def _spread(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"median": round(statistics.median(values), 2), "max": max(values), "min": min(values)}


def main() -> None:
    """Parse flags, start the service over a copy of the model folder, run, print and save the report."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=600, help="how long the chaos lasts (default: 600)")
    parser.add_argument("--clients", type=int, default=8, help="closed-loop clients (default: 8)")
    parser.add_argument("--kill-every", type=float, default=20,
                        help="mean seconds between kills, each waiting for ready (default: 20)")
    parser.add_argument("--publish-every", type=float, default=5,
                        help="mean seconds between publications and removals (default: 5)")
    parser.add_argument("--recovery", type=int, default=0, metavar="N",
                        help="instead: kill the idle runtime N times, print the time to ready (default: 0)")
    parser.add_argument("--seed", type=int, default=25, help="of every random choice (default: 25)")
    parser.add_argument("--port", type=int, default=8770, help="(default: 8770)")
    parser.add_argument("--checkout", type=Path, default=REPO, help="the code to serve (default: this one)")
    parser.add_argument("--models", type=Path, default=REPO / "models", help="copied (default: models)")
    parser.add_argument("--out", type=Path, default=REPO / "bench-results" / "chaos.json")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="chaos-"))
    model_dir = folder / "models"
    shutil.copytree(args.models, model_dir)
    service = Service(args.checkout.resolve(), model_dir, args.port, folder, {})
    try:
        started = time.monotonic()
        service.wait_ready()
        report = {"start_to_ready_s": round(time.monotonic() - started, 2), "log": str(service.log_path)}
        report |= recovery(service, args.recovery) if args.recovery else chaos(service, args, model_dir)
    finally:
        service.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    if report.get("lost_otherwise") or report.get("answers_from_versions_never_good"):
        sys.exit(1)


if __name__ == "__main__":
    main()
