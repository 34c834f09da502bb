"""Benchmark what a shadow costs: p50 and images/s at 8 and 64 connections with a 10 % shadow and with
none, side by side in one run.

    .venv/bin/python scripts/bench_rollout.py                         # 3 rounds of 10 s per setting
    .venv/bin/python scripts/bench_rollout.py --seconds 5 --rounds 1  # a quick look

It starts the service (``python -m service``, default settings) on a free port over a copy of ``models/``
with ``mnist-cnn`` version 2 pinned as the default, and sends it one UINT8 image per OIP JSON request with
wrk. Each round measures both settings at both concurrencies, the shadow (version 1, 10 %, started and
stopped with ``python -m service.routing``, taken when the routing document shows it) first in odd rounds
and last in even ones, so that the machine's drift falls on both alike. It prints the median of each
setting, the shadow's cost (1 - shadow / none) and how its copies went (compared, dropped under load),
Then, under a steady wrk load of 8 connections, it sets version 1 as the default and rolls back through
the management API, three times each, and prints how long each call took to answer (the API answers once
every runtime applied the change) and the load's failed requests. Results go to bench-results/rollout.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from bench_serve import free_port, payload, serve_env, start, stop, wrk  # noqa: E402

NAME, DEFAULT, SHADOW = "mnist-cnn", "2", "1"
TOKEN = "bench-rollout-token"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, default=REPO / "models",
                   help="repository copied for the run; needs mnist-cnn 1 and 2 (default: models)")
    p.add_argument("--percent", type=float, default=10.0, help="the shadow's share (default: 10)")
    p.add_argument("--connections", type=int, nargs="+", default=[8, 64],
                   help="wrk connections (default: 8 64)")
    p.add_argument("--seconds", type=int, default=10, help="each wrk run (default: 10)")
    p.add_argument("--rounds", type=int, default=3, help="runs of each setting (default: 3)")
    p.add_argument("--out", type=Path, default=REPO / "bench-results" / "rollout.json",
                   help="where the results go (default: bench-results/rollout.json)")
    return p.parse_args()


def routing(model_dir: Path, *command: str) -> None:
    """One ``python -m service.routing`` command on the copy."""
    subprocess.run([sys.executable, "-m", "service.routing", "--model-dir", str(model_dir), *command],
                   cwd=REPO, check=True, capture_output=True)


def shadow(base: str, model_dir: Path, percent: float | None) -> None:
    """Start (a percent) or stop (None) the shadow; return once the service routes that way."""
    if not percent and not requests.get(f"{base}/v1/models/{NAME}/routing", timeout=10).json()["state"][
            "shadow"]:
        return
    routing(model_dir, *(("shadow", NAME, SHADOW, f"{percent:g}") if percent else ("stop-shadow", NAME)))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        effective = requests.get(f"{base}/v1/models/{NAME}/routing", timeout=10).json()["effective"]
        if bool(effective["shadow"]) == bool(percent):
            return
        time.sleep(0.1)
    raise SystemExit("the service did not take the shadow change within 60 s")


def copies(base: str) -> dict[str, float]:
    """The shadow copies' outcomes so far, from /metrics."""
    out: dict[str, float] = {}
    for line in requests.get(f"{base}/metrics", timeout=10).text.splitlines():
        if line.startswith("trainserve_comparison_copies_total{") and 'role="shadow"' in line:
            outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
            out[outcome] = out.get(outcome, 0) + float(line.rsplit(" ", 1)[1])
    return out


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-rollout-") as tmp:
        work = Path(tmp)
        models = work / "models"
        shutil.copytree(args.model_dir / NAME, models / NAME)
        (models / NAME / "routing.json").unlink(missing_ok=True)
        routing(models, "set-default", NAME, DEFAULT)
        base = f"http://127.0.0.1:{free_port()}"
        service, ready_s = start([sys.executable, "-m", "service"],
                                 serve_env(base, str(models)) | {"TRAINSERVE_MANAGEMENT_TOKEN": TOKEN},
                                 f"{base}/readyz")
        try:
            path, content_type, headers, body = payload("json", NAME, work)
            runs: dict[tuple[str, int], list[dict]] = {}
            # Unmeasured: the shadow's version is loaded when the shadow starts, and both versions see
            # every batch size once before a run counts.
            shadow(base, models, args.percent)
            for c in args.connections:
                wrk(base + path, content_type, headers, body, c, 5, work)
            copies_before = copies(base)
            for round_ in range(args.rounds):
                order = ("shadow", "none") if round_ % 2 == 0 else ("none", "shadow")
                for setting in order:
                    shadow(base, models, args.percent if setting == "shadow" else None)
                    for c in args.connections:
                        result = wrk(base + path, content_type, headers, body, c, args.seconds, work)
                        runs.setdefault((setting, c), []).append(result)
                        print(f"round {round_ + 1} {setting:6} c={c:<3} "
                              f"{result['requests'] / (result['duration_us'] / 1e6):8.0f} images/s  "
                              f"p50 {result['p50_us'] / 1000:6.2f} ms  errors {result['errors']}", flush=True)
            copies_after = copies(base)
            if order[-1] == "shadow":
                shadow(base, models, None)
            changes = under_load(base, path, content_type, headers, body, work)
        finally:
            stop(service)
    report = summarize(runs, args)
    report["ready_s"] = ready_s
    report["shadow_copies"] = {k: copies_after.get(k, 0) - copies_before.get(k, 0) for k in copies_after}
    report["changes_under_load"] = changes
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: report[k] for k in ("table", "shadow_copies", "changes_under_load")}, indent=1))


def under_load(base: str, path: str, content_type: str, headers: dict[str, str], body: Path,
               work: Path) -> dict:
    """Set-default and rollback through the API, three times each, while wrk sends 8 connections' worth of
    requests: how long each call took to answer, and what wrk counted."""
    result: dict = {}
    load = threading.Thread(target=lambda: result.update(wrk(base + path, content_type, headers, body, 8, 16,
                                                              work)))
    load.start()
    time.sleep(3)  # wrk's 1 s warm-up, then its run
    route = f"{base}/v2/repository/models/{NAME}/routing"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    took: dict[str, list[float]] = {"set-default": [], "rollback": []}
    for _ in range(3):
        for action, call in (("set-default", lambda: requests.put(f"{route}/default", json={"version": "1"},
                                                                  headers=auth, timeout=60)),
                             ("rollback", lambda: requests.post(f"{route}/rollback", headers=auth,
                                                                timeout=60))):
            started = time.monotonic()
            answer = call()
            took[action].append(time.monotonic() - started)
            if answer.status_code != 200:
                raise SystemExit(f"{action}: {answer.status_code} {answer.text}")
            time.sleep(1)
    load.join()
    out = {f"{action}_answer_ms": [round(t * 1000, 1) for t in times] for action, times in took.items()}
    return out | {"load_requests": result.get("requests"), "load_errors": result.get("errors")}


def summarize(runs: dict[tuple[str, int], list[dict]], args: argparse.Namespace) -> dict:
    """The median of each setting and concurrency, and the shadow's cost beside none."""
    table = []
    for c in args.connections:
        row: dict = {"connections": c}
        for setting in ("none", "shadow"):
            results = runs[(setting, c)]
            row[setting] = {
                "images_per_s": statistics.median(r["requests"] / (r["duration_us"] / 1e6) for r in results),
                "p50_ms": statistics.median(r["p50_us"] / 1000 for r in results),
                "p99_ms": statistics.median(r["p99_us"] / 1000 for r in results),
                "errors": sum(r["errors"] for r in results)}
        row["throughput_cost"] = 1 - row["shadow"]["images_per_s"] / row["none"]["images_per_s"]
        row["p50_cost"] = row["shadow"]["p50_ms"] / row["none"]["p50_ms"] - 1
        # Round by round (each pair measured back to back), which the machine's drift disturbs less.
        pairs = list(zip(runs[("none", c)], runs[("shadow", c)], strict=True))
        row["throughput_cost_by_round"] = statistics.median(
            1 - (s["requests"] / s["duration_us"]) / (n["requests"] / n["duration_us"]) for n, s in pairs)
        row["p50_cost_by_round"] = statistics.median(s["p50_us"] / n["p50_us"] - 1 for n, s in pairs)
        table.append(row)
    return {"percent": args.percent, "seconds": args.seconds, "rounds": args.rounds, "table": table,
            "runs": {f"{s}/c{c}": r for (s, c), r in runs.items()}}


if __name__ == "__main__":
    main()
