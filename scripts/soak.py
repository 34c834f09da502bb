"""A bounded soak of the whole service: start it (``python -m service`` on 127.0.0.1), measure its capacity,
then drive it with wrk at twice the concurrency it can hold for a set time, optionally killing an HTTP
worker or the model runtime half-way. Prints status counts, p50/p99, failed requests, how long readiness
took to come back, and the RSS of every process of the service at start and end (``make soak``).

    python scripts/soak.py --seconds 600                 # the 10-minute soak (docs/operations.md)
    python scripts/soak.py --seconds 60 --connections 64 --kill runtime   # kill -9 the runtime under load
    python scripts/soak.py --seconds 60 --connections 64 --kill worker    # kill -9 one HTTP worker
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests
from PIL import Image

REPO = Path(__file__).resolve().parents[1]

# wrk POSTs the PNG at %(png)s and keeps its threads, so that done() can add up what each one counted.
PNG_POST_LUA = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "image/png"
local f = io.open("%(png)s", "rb")
wrk.body = f:read("*all")
f:close()
local threads = {}
function setup(thread) table.insert(threads, thread) end
"""
# Counts every status and socket error per wrk thread; done() prints them as one JSON line.
LUA = PNG_POST_LUA + r"""function init(args) statuses = {} end
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end
function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    local counts = thread:get("statuses")
    for status, n in pairs(counts) do total[tostring(status)] = (total[tostring(status)] or 0) + n end
  end
  local e = summary.errors
  io.write(string.format('SOAK {"statuses": {%%s}, "errors": {"connect": %%d, "read": %%d, "write": %%d, ' ..
    '"timeout": %%d}, "p50_ms": %%.2f, "p99_ms": %%.2f, "requests": %%d}\n',
    (function() local parts = {} for k, v in pairs(total) do table.insert(parts, '"' .. k .. '": ' .. v) end
      return table.concat(parts, ", ") end)(),
    e.connect, e.read, e.write, e.timeout, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.requests))
end
"""


def digit_png(data_dir: Path) -> bytes:
    """A real MNIST test digit as PNG."""
    with gzip.open(data_dir / "mnist" / "t10k-images-idx3-ubyte.gz") as fh:
        raw = fh.read()
    buffer = io.BytesIO()
    Image.fromarray(np.frombuffer(raw, np.uint8, 784, offset=16).reshape(28, 28)).save(buffer, format="PNG")
    return buffer.getvalue()


def descendants(pid: int) -> list[int]:
    """Every process under ``pid``."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in map(int, (task / "children").read_text().split()):
            out += [child, *descendants(child)]
    return out


def is_spare(pid: int) -> bool:
    """Whether ``pid`` is the launcher's spare runtime, not yet made a runtime (service/runtime)."""
    try:
        return (b"--spare" in Path(f"/proc/{pid}/cmdline").read_bytes()
                and Path(f"/proc/{pid}/comm").read_text().strip() != "model-runtime")
    except OSError:
        return False


def rss_mib(pids: list[int]) -> dict[str, float]:
    """Resident memory of each process, by pid and a short name."""
    out = {}
    for pid in pids:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        kind = ("spare" if is_spare(pid) else "runtime" if b"service.runtime" in cmd else "front-end"
                if any(b"granian" in c or b"gunicorn" in c for c in cmd) else "launcher")
        out[f"{kind}:{pid}"] = round(int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024, 1)
    return out


def wrk(url: str, script: Path, connections: int, seconds: float) -> dict:
    """Run wrk; its SOAK line as a dict."""
    result = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{int(seconds)}s", "--timeout", "10s",
                             "-s", str(script), url], capture_output=True, text=True, timeout=seconds + 120)
    line = next(x for x in result.stdout.splitlines() if x.startswith("SOAK "))
    return json.loads(line[5:])


def watch_readiness(base: str, stop: threading.Event, out: dict) -> None:
    """Record the longest stretch /readyz was not 200 while ``stop`` is unset."""
    down_since, longest = None, 0.0
    while not stop.is_set():
        try:
            ok = requests.get(f"{base}/readyz", timeout=2).status_code == 200
        except requests.RequestException:
            ok = False
        now = time.monotonic()
        if not ok and down_since is None:
            down_since = now
        elif ok and down_since is not None:
            longest, down_since = max(longest, now - down_since), None
        time.sleep(0.05)
    out["readiness_down_s"] = round(longest, 2)


def kill_one(kind: str, pids: list[int]) -> int:
    """kill -9 the runtime or one HTTP worker; the pid killed."""
    for pid in pids:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        is_runtime = b"service.runtime" in cmd and not is_spare(pid)
        parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        is_worker = not is_runtime and b"service.runtime" not in cmd and parent in pids
        if (kind == "runtime" and is_runtime) or (kind == "worker" and is_worker and b"resource_tracker"
                                                    not in cmd):
            os.kill(pid, signal.SIGKILL)
            return pid
    raise SystemExit(f"no {kind} process found")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--kill", choices=["worker", "runtime"])
    parser.add_argument("--connections", type=int, default=0,
                        help="wrk connections (default: twice the requests the service holds at once)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--model", default="mnist-cnn")
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("TRAINSERVE_DATA_DIR", "data")))
    parser.add_argument("--out", type=Path, default=REPO / "bench-results" / "soak.json")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: apt-get install wrk")
    folder = Path(tempfile.mkdtemp(prefix="soak-"))
    (folder / "digit.png").write_bytes(digit_png(args.data_dir))
    script = folder / "soak.lua"
    script.write_text(LUA % {"png": folder / "digit.png"})
    base = f"http://127.0.0.1:{args.port}"
    env = os.environ | {"TRAINSERVE_BIND": f"127.0.0.1:{args.port}", "TRAINSERVE_GRPC_BIND": "off"}
    log = (folder / "service.log").open("wb")
    service = subprocess.Popen([sys.executable, "-m", "service"], cwd=REPO, env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or service.poll() is not None:
                raise SystemExit(f"the service did not start: {folder / 'service.log'}")
            time.sleep(0.2)
        url = f"{base}/v1/models/{args.model}:classify"
        capacity = wrk(url, script, 64, 10)  # saturated: throughput at the concurrency it serves best
        held = int(env.get("TRAINSERVE_THREADS", "256")) * 2 + int(env.get("TRAINSERVE_MAX_QUEUE", "256"))
        report = {"capacity_rps": round(capacity["requests"] / 10),
                  "connections": args.connections or min(2 * held, 2000), "seconds": args.seconds}
        # Warm at the soak's concurrency first: the front end starts its threads on demand, once.
        wrk(url, script, report["connections"], 15)
        report["rss_start_mib"] = rss_mib([service.pid, *descendants(service.pid)])
        stop, readiness = threading.Event(), {}
        watcher = threading.Thread(target=watch_readiness, args=(base, stop, readiness))
        watcher.start()
        if args.kill:
            timer = threading.Timer(args.seconds / 2, lambda: report.__setitem__(
                "killed", kill_one(args.kill, descendants(service.pid))))
            timer.start()
        report |= wrk(url, script, report["connections"], args.seconds)
        stop.set()
        watcher.join()
        report |= readiness
        report["rss_end_mib"] = rss_mib([service.pid, *descendants(service.pid)])
        answered = sum(report["statuses"].values())
        bad = sum(n for s, n in report["statuses"].items() if s not in ("200", "429", "503"))
        report["failed"] = bad + sum(report["errors"].values())
        sent = answered + sum(report["errors"].values())
        report["failed_pct"] = round(100 * report["failed"] / max(sent, 1), 3)
        start, end = sum(report["rss_start_mib"].values()), sum(report["rss_end_mib"].values())
        report["rss_growth_pct"] = round(100 * (end - start) / start, 1)
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(timeout=90)
        log.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
