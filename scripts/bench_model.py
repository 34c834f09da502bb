"""In-process throughput of an exported TorchScript artifact: images/s by batch size and torch threads.

    python scripts/bench_model.py models/mnist-cnn/1
    python scripts/bench_model.py models/mnist-cnn/1 --batch-sizes 1 8 64 256 --threads 1 2

This is the ceiling an HTTP service can approach: no parsing, no queueing, uint8 pixels straight in. Run it
from the repository root with the project installed (`make setup`), or with PYTHONPATH=. .
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from service.manifest import read_manifest, verify_checksum
from training.export import load_scripted


def images_per_second(model: torch.nn.Module, batch: torch.Tensor, seconds: float = 2.0,
                      rounds: int = 5) -> float:
    """Median images/s over ``rounds`` timed rounds of about ``seconds / rounds`` each, after a warm-up."""
    with torch.inference_mode():
        for _ in range(20):  # warm-up: TorchScript profiles and optimises its graph on the first calls
            model(batch)
        per_call = _time_calls(model, batch, 10) / 10
        calls = max(1, int(seconds / rounds / max(per_call, 1e-6)))
        rates = [calls * len(batch) / _time_calls(model, batch, calls) for _ in range(rounds)]
    return statistics.median(rates)


def _time_calls(model: torch.nn.Module, batch: torch.Tensor, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        model(batch)
    return time.perf_counter() - started


def main() -> None:
    """Parse flags, load and verify the artifact, print a table of images/s."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("artifact", type=Path, help="an artifact folder, e.g. models/mnist-cnn/1")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64], help="(default: 1 64)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch threads (default: 1 2)")
    p.add_argument("--seconds", type=float, default=2.0, help="timed seconds per cell (default: 2)")
    args = p.parse_args()
    manifest = read_manifest(args.artifact)
    model = load_scripted(verify_checksum(manifest, args.artifact))
    print(f"{manifest.name}/{manifest.version}: {manifest.architecture}, {manifest.parameters:,} parameters, "
          f"{manifest.extra.get('macs_per_example', 0) / 1e6:.2f} M MACs/image, "
          f"test accuracy {100 * manifest.metrics['test_accuracy']:.2f} %")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for size in args.batch_sizes:
            batch = torch.randint(0, 256, (size, *manifest.input.shape), dtype=torch.uint8)
            rate = images_per_second(model, batch, args.seconds)
            print(f"threads {threads}  batch {size:>4}  {rate:>9,.0f} images/s  "
                  f"({1000 * size / rate:.3f} ms per batch)", flush=True)


if __name__ == "__main__":
    main()
