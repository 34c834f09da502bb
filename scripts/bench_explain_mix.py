"""Explanations beside predictions, through the whole service: ``:explain`` latency at concurrency 1, and
predictions' throughput at concurrency 64 without and with explanation traffic, side by side.

    python scripts/bench_explain_mix.py --model-dir models            # starts python -m service
    python scripts/bench_explain_mix.py --explainers 6 --duration 8 --rounds 3

Predictions: wrk POSTs one PNG per request to ``:classify`` on 64 connections (as scripts/bench_serve.py).
Explanation traffic: ``--explainers`` clients (default 6: about a tenth of the clients) that POST the
same PNG to ``:explain`` one after another for the whole run. Rounds alternate the two runs; the report
gives the median images/s of each and their ratio (the issue's target: at least 0.9), and the
explanations' own figures (answered, 429s). The figures in docs/serving.md#explanations came from it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import free_port, payload, serve_env, start, stop, wrk


def explain_load(url: str, body: bytes, clients: int, seconds: float) -> dict[str, float]:
    """``clients`` closed-loop explainers for ``seconds``: answered, refused (429) and p50 latency."""
    lock, latencies, refused = threading.Lock(), [], [0]
    stop_at = time.monotonic() + seconds

    def client() -> None:
        with requests.Session() as session:
            while time.monotonic() < stop_at:
                started = time.monotonic()
                answer = session.post(url, data=body, headers={"Content-Type": "image/png"}, timeout=60)
                with lock:
                    if answer.status_code == 200:
                        latencies.append(time.monotonic() - started)
                    elif answer.status_code == 429:
                        refused[0] += 1
                        time.sleep(0.05)
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"explained": len(latencies), "refused": refused[0],
            "p50_ms": 1000 * statistics.median(latencies) if latencies else float("nan")}


def main() -> None:
    """Start the service, measure, print and write the figures."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", default="models")
    parser.add_argument("--model", default="mnist-cnn")
    parser.add_argument("--explainers", type=int, default=6)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=int, default=6, help="seconds per run (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="bench-results/explain-mix.json")
    args = parser.parse_args()
    url = f"http://127.0.0.1:{free_port()}"
    proc, _ = start([sys.executable, "-m", "service"], serve_env(url, args.model_dir), f"{url}/readyz")
    try:
        with tempfile.TemporaryDirectory() as folder:
            tmp = Path(folder)
            _, ctype, headers, body = payload("png", args.model, tmp)
            classify = f"{url}/v1/models/{args.model}:classify"
            explain = f"{url}/v1/models/{args.model}:explain"
            image = body.read_bytes()
            single = [explain_load(explain, image, 1, 3.0)["p50_ms"] for _ in range(3)]
            alone, mixed, side = [], [], []
            for _ in range(args.rounds):
                alone.append(wrk(classify, ctype, headers, body, args.connections, args.duration, tmp))
                holder: dict = {}
                loader = threading.Thread(target=lambda into=holder: into.update(
                    explain_load(explain, image, args.explainers, args.duration + 1.5)))
                loader.start()
                mixed.append(wrk(classify, ctype, headers, body, args.connections, args.duration, tmp))
                loader.join()
                side.append(holder)
    finally:
        stop(proc)
    plain = statistics.median(r["requests"] / r["duration_us"] * 1e6 for r in alone)
    busy = statistics.median(r["requests"] / r["duration_us"] * 1e6 for r in mixed)
    report = {"explain_c1_p50_ms": statistics.median(single), "predictions_c64_rps": plain,
              "predictions_c64_with_explanations_rps": busy, "ratio": busy / plain,
              "explanations": side, "explainers": args.explainers, "connections": args.connections}
    print(json.dumps(report, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
