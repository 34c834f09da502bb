"""Time the default training run end to end and print epochs, seconds and test accuracy.

    python scripts/bench_train.py --data-dir ../shared/datasets            # the default `make train`
    python scripts/bench_train.py --data-dir ../shared/datasets --repeat 3 -- --seed 2
    flock /tmp/trainserve-cpu.lock python scripts/bench_train.py ...      # on a shared machine

Wall time is the whole command as a user runs it (interpreter start, imports, data decoding, training,
the test pass, plots and export). The artifact goes to a temporary folder unless --keep-in is given, so
benchmarking never adds versions to models/.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def bench_once(data_dir: Path, out: Path, extra: list[str]) -> dict[str, float]:
    """One `python -m training` run; returns its wall time, epochs and test accuracy."""
    cmd = [sys.executable, "-m", "training", "--data-dir", str(data_dir), "--out", str(out / "models"),
           "--run-dir", str(out / "runs"), *extra]
    started = time.perf_counter()
    result = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"training failed ({result.returncode}):\n{result.stderr[-3000:]}")
    manifest_path = max(out.glob("models/*/*/manifest.json"), key=lambda p: p.stat().st_mtime)
    manifest = json.loads(manifest_path.read_text())
    return {"wall_s": wall, "train_s": manifest["extra"]["train_seconds"],
            "epochs": manifest["extra"]["epochs_run"], "test_accuracy": manifest["metrics"]["test_accuracy"]}


def main() -> None:
    """Parse flags, run the benchmark --repeat times, print one line per run and a summary."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=Path("../shared/datasets"),
                   help="folder holding mnist/ (default: ../shared/datasets)")
    p.add_argument("--repeat", type=int, default=1, help="runs (default: 1)")
    p.add_argument("--keep-in", type=Path, default=None, help="write artifacts here instead of a temp dir")
    p.add_argument("train_args", nargs="*", help="extra flags for python -m training, after --")
    args = p.parse_args()
    rows = []
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
            row = bench_once(args.data_dir.resolve(), args.keep_in or Path(tmp), args.train_args)
        rows.append(row)
        print(f"run {i + 1}: epochs {row['epochs']}  wall {row['wall_s']:.1f} s  "
              f"(data + training {row['train_s']:.1f} s)  test accuracy {100 * row['test_accuracy']:.2f} %",
              flush=True)
    if len(rows) > 1:
        accs = [100 * r["test_accuracy"] for r in rows]
        walls = [r["wall_s"] for r in rows]
        print(f"mean: wall {statistics.mean(walls):.1f} s (max {max(walls):.1f})  test accuracy "
              f"{statistics.mean(accs):.2f} % (min {min(accs):.2f}, max {max(accs):.2f})")


if __name__ == "__main__":
    main()
