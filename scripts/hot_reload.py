"""Hot reload under traffic, end to end: serve a copy of the shipped model folder (``python -m service`` on
127.0.0.1, model control poll, the default policy latest:1), send it a steady request rate with wrk, train
and publish a new version with ``python -m training`` meanwhile, and report how long after the new artifact
appeared it was served, every status wrk got (and which version answered), and when the old version was
dropped (``make hot-reload``; docs/serving.md#hot-reload).

    python scripts/hot_reload.py --data-dir ../shared/datasets              # 100 requests/s, 1 epoch
    python scripts/hot_reload.py --rate 64000 --connections 64 --server gunicorn   # as fast as it answers
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
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
from soak import PNG_POST_LUA, digit_png

REPO = Path(__file__).resolve().parents[1]

# wrk has no rate option: each connection waits `delay` ms between requests, so connections * 1000 / delay
# requests/s at most. Counts statuses and the version that answered; done() prints them as one JSON line.
LUA = PNG_POST_LUA + r"""function init(args) counts = {} end
function delay() return %(delay_ms)d end
function response(status, headers, body)
  local version = string.match(body, '"version"%%s*:%%s*"(%%d+)"') or "none"
  local key = status .. " v" .. version
  counts[key] = (counts[key] or 0) + 1
end
function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    for key, n in pairs(thread:get("counts")) do total[key] = (total[key] or 0) + n end
  end
  local parts = {}
  for k, v in pairs(total) do table.insert(parts, '"' .. k .. '": ' .. v) end
  local e = summary.errors
  io.write(string.format('RELOAD {"answers": {%%s}, "errors": {"connect": %%d, "read": %%d, "write": %%d, ' ..
    '"timeout": %%d}, "p50_ms": %%.2f, "p99_ms": %%.2f, "max_ms": %%.2f, "requests": %%d, ' ..
    '"seconds": %%.1f}\n', table.concat(parts, ", "), e.connect, e.read, e.write, e.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000, summary.requests,
    summary.duration / 1e6))
end
"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("TRAINSERVE_DATA_DIR", "data")))
    parser.add_argument("--rate", type=int, default=100, help="requests/s wrk sends (default: %(default)s)")
    parser.add_argument("--connections", type=int, default=10, help="wrk connections (default: %(default)s)")
    parser.add_argument("--after", type=float, default=10.0,
                        help="seconds of traffic after the new version is served (default: %(default)s)")
    parser.add_argument("--train-args", default="--epochs 1",
                        help="flags for python -m training (default: %(default)s)")
    parser.add_argument("--server", choices=["granian", "gunicorn"], default="granian",
                        help="the HTTP front end (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--out", type=Path, default=REPO / "bench-results" / "hot_reload.json")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="trainserve-reload-"))
    models = work / "models"
    shutil.copytree(REPO / "models" / "mnist-cnn" / "1", models / "mnist-cnn" / "1")
    (work / "digit.png").write_bytes(digit_png(args.data_dir))
    delay_ms = max(1, round(1000 * args.connections / args.rate))
    (work / "reload.lua").write_text(LUA % {"png": work / "digit.png", "delay_ms": delay_ms})
    base = f"http://127.0.0.1:{args.port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRAINSERVE_", "PROMETHEUS_"))}
    env |= {"TRAINSERVE_MODEL_DIR": str(models), "TRAINSERVE_BIND": f"127.0.0.1:{args.port}",
            "TRAINSERVE_GRPC_BIND": "off",
            "TRAINSERVE_DEVICE": "cpu", "TRAINSERVE_SERVER": args.server, "PYTHONPATH": str(REPO)}
    log = (work / "service.log").open("wb")
    service = subprocess.Popen([sys.executable, "-m", "service"], cwd=REPO, env=env, stdout=log,
                               stderr=subprocess.STDOUT)
    try:
        wait_ready(base, service)
        report = run(args, base, work, models)
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(timeout=60)
        log.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"(service log and run folder in {work}; written to {args.out})")


def run(args: argparse.Namespace, base: str, work: Path, models: Path) -> dict:
    """wrk at the rate, a training run publishing version 2, and a probe timing the swap."""
    wrk = subprocess.Popen(["wrk", "-t2", f"-c{args.connections}", "-d3600s", "--timeout", "10s", "-s",
                            str(work / "reload.lua"), f"{base}/v1/models/mnist-cnn:classify"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(3)
    probe: dict = {}
    watcher = threading.Thread(target=watch, args=(base, models / "mnist-cnn" / "2", work / "service.log",
                                                   probe), daemon=True)
    watcher.start()
    training = subprocess.run([sys.executable, "-m", "training", "--data-dir", str(args.data_dir), "--out",
                               str(models), "--run-dir", str(work / "runs"), "--publish", "always",
                               *shlex.split(args.train_args)], cwd=REPO, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=3600)
    if training.returncode != 0:
        wrk.send_signal(signal.SIGINT)
        raise SystemExit(f"training failed:\n{training.stdout}\n{training.stderr}")
    watcher.join(timeout=120)
    time.sleep(args.after)
    wrk.send_signal(signal.SIGINT)  # wrk prints its summary (and done()'s line) on SIGINT
    out, _ = wrk.communicate(timeout=60)
    line = next((x for x in out.splitlines() if x.startswith("RELOAD ")), None)
    if line is None:
        raise SystemExit(f"wrk gave no summary:\n{out}")
    result = json.loads(line[7:])
    answers = result["answers"]
    failed = sum(n for key, n in answers.items() if not key.startswith("200 "))
    failed += sum(result["errors"].values())
    return {"server": args.server, "rate_asked": args.rate,
            "rate_sent": round(result["requests"] / result["seconds"], 1),
            "requests": result["requests"], "failed": failed, "answers": answers, "errors": result["errors"],
            "p50_ms": result["p50_ms"], "p99_ms": result["p99_ms"], "max_ms": result["max_ms"],
            "served_after_s": probe.get("served_after_s"),
            "dropped_old_after_s": probe.get("dropped_after_s"),
            "training": [line for line in (training.stdout + training.stderr).splitlines()
                         if line.startswith(("test accuracy", "exported"))]}


def watch(base: str, folder: Path, log: Path, out: dict) -> None:
    """When the new version's manifest appears, when a request without a version gets it, and when the
    runtime drops the old one (it waits a request's deadline for requests already addressed to it)."""
    deadline = time.monotonic() + 3600
    while not (folder / "manifest.json").exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    out["appeared"] = appeared = time.monotonic()
    body = {"inputs": [{"name": "input", "datatype": "UINT8", "shape": [1, 784],
                        "data": np.zeros(784, np.uint8).tolist()}]}
    with requests.Session() as session:
        while time.monotonic() < appeared + 120:
            r = session.post(f"{base}/v2/models/mnist-cnn/infer", json=body, timeout=30)
            if r.status_code == 200 and r.json()["model_version"] == folder.name:
                out["served_after_s"] = round(time.monotonic() - appeared, 2)
                break
            time.sleep(0.02)
    while time.monotonic() < appeared + 120:
        if "dropped mnist-cnn/1" in log.read_text(errors="replace"):
            out["dropped_after_s"] = round(time.monotonic() - appeared, 1)
            return
        time.sleep(0.1)


def wait_ready(base: str, service: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if service.poll() is not None:
            raise SystemExit("the service exited; see its log")
        try:
            if requests.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise SystemExit("the service was not ready in 120 s")


if __name__ == "__main__":
    main()
